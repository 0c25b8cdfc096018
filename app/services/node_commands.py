"""Which commands a node may run to test and reload its proxy.

An administrator picks one of the forms the node's engine knows
(``Engine.command_forms``), optionally after ``sudo -n`` when the SSH user is not
root.  Anything else is refused unless ``ALLOW_CUSTOM_NODE_COMMANDS`` is on.  Either
way a command is an argument list, stored as its quoted command line, and the
connector runs it without a shell interpreting any of it: a free string that once
reached a root shell on every node of the fleet can no longer.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from functools import cache

from flask import current_app

from app.engines import all_engines, get_engine
from app.security import split_command, validate_command_address, validate_command_path

PURPOSES = ("test", "reload")
SUDO = ("sudo", "-n")
# The characters known forms are made of; a word with any other is refused with
# its own message, before matching, so "nginx -t; reboot" says what is wrong.
_PLAIN_WORD = re.compile(r"^[A-Za-z0-9_./:=@%+,\[\]-]+$")
_PLACEHOLDERS: dict[str, Callable[[str], str]] = {
    "PATH": validate_command_path, "ADDRESS": validate_command_address}

Token = str | tuple[str, ...]


def custom_commands_allowed() -> bool:
    return bool(current_app.config.get("ALLOW_CUSTOM_NODE_COMMANDS", False))


def patterns(engine: str, purpose: str) -> tuple[str, ...]:
    forms = get_engine(engine).command_forms
    return forms.test if purpose == "test" else forms.reload


def known_forms(purpose: str) -> dict[str, tuple[str, ...]]:
    return {name: patterns(name, purpose) for name in all_engines()}


def offered(engine: str, purpose: str, ssh_user: str = "root") -> list[str]:
    """Ready-made command lines for the administrator's form, with their ``sudo -n``
    variants when the node is reached as another user than root."""
    forms = get_engine(engine).command_forms
    lines = list(forms.offered_test if purpose == "test" else forms.offered_reload)
    if ssh_user != "root":
        lines += [with_sudo(line) for line in lines]
    return lines


def with_sudo(line: str) -> str:
    """``line`` run through ``sudo -n``: never prompts, so a missing sudoers rule
    fails at once instead of hanging the deployment."""
    return shlex.join([*SUDO, *shlex.split(line)])


def offered_by_engine(purpose: str, ssh_user: str = "root") -> dict[str, list[str]]:
    return {name: offered(name, purpose, ssh_user) for name in all_engines()}


def is_known(engine: str, purpose: str, value: str, ssh_user: str = "root") -> bool:
    try:
        clean_command(engine, purpose, value, ssh_user, allow_custom=False)
    except ValueError:
        return False
    return True


def clean_command(engine: str, purpose: str, value: object, ssh_user: str = "root", *,
                  allow_custom: bool | None = None) -> str:
    """The command line to store for ``value`` (a string), which must be a known form
    of the engine unless custom commands are allowed.

    :param allow_custom: defaults to ``ALLOW_CUSTOM_NODE_COMMANDS``.
    :raises ValueError: with the reason, for the form's or the API's field.
    """
    argv = split_command(value)
    if allow_custom is None:
        allow_custom = custom_commands_allowed()
    if allow_custom:
        return shlex.join(argv)
    odd = next((word for word in argv if not _PLAIN_WORD.fullmatch(word)), None)
    if odd is not None:
        raise ValueError(f"argument '{odd[:40]}' has characters that are not allowed")
    words = argv
    if tuple(argv[:2]) == SUDO:
        if ssh_user == "root":
            raise ValueError("needs no 'sudo -n': the node is reached as root")
        words = argv[2:]
    problems: list[str] = []
    if not any(_matches(_compiled(pattern), words, problems)
               for pattern in patterns(engine, purpose)):
        if problems:
            raise ValueError(problems[0])
        raise ValueError(_unknown(engine, purpose, ssh_user))
    return shlex.join(argv)


def _unknown(engine: str, purpose: str, ssh_user: str) -> str:
    known = " | ".join(patterns(engine, purpose))
    notes = ["PATH is an absolute path"]
    if "ADDRESS" in known:
        notes.append("ADDRESS is host:port")
    if ssh_user != "root":
        notes.append("each may follow 'sudo -n'")
    return f"is not a known {engine} {purpose} command: use {known} ({'; '.join(notes)})"


@cache
def _compiled(pattern: str) -> tuple[Token, ...]:
    """``nginx -t [-c PATH]`` -> ``("nginx", "-t", ("-c", "PATH"))``."""
    tokens: list[Token] = []
    group: list[str] | None = None
    for word in pattern.split():
        if word.startswith("["):
            group, word = [], word[1:]
        closing = word.endswith("]")
        word = word.rstrip("]")
        if group is None:
            tokens.append(word)
        else:
            group.append(word)
            if closing:
                tokens.append(tuple(group))
                group = None
    return tuple(tokens)


def _word_matches(expected: str, word: str, *, program: bool, problems: list[str]) -> bool:
    check = _PLACEHOLDERS.get(expected)
    if check is None and program and word.startswith("/"):
        # The program by its absolute path (/usr/sbin/nginx).
        if word.rsplit("/", 1)[1] != expected:
            return False
        check = validate_command_path
    if check is None:
        return word == expected
    try:
        check(word)
    except ValueError as exc:
        problems.append(f"argument {exc}")
        return False
    return True


def _matches(tokens: tuple[Token, ...], argv: list[str], problems: list[str]) -> bool:
    """Whether ``argv`` is ``tokens`` with each optional group present or not."""

    def match(t: int, a: int) -> bool:
        if t == len(tokens):
            return a == len(argv)
        token = tokens[t]
        if isinstance(token, tuple):
            part = argv[a:a + len(token)]
            if len(part) == len(token) and all(
                    _word_matches(e, w, program=False, problems=problems)
                    for e, w in zip(token, part, strict=True)) and match(t + 1, a + len(token)):
                return True
            return match(t + 1, a)
        return (a < len(argv)
                and _word_matches(token, argv[a], program=t == 0, problems=problems)
                and match(t + 1, a + 1))

    return match(0, 0)
