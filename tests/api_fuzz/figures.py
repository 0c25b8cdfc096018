"""After the run's summary, the fuzzing's figures: operations exercised and, per role,
requests by status class (the numbers a reader of the log wants, not a test).

A plugin loaded by tests/conftest.py rather than this folder's conftest: with
pytest-xdist the workers count and the controller, which never collects this folder,
adds their counts up and prints them."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

# (role, operation, status class such as "2xx") -> requests
ANSWERS: Counter[tuple[str, str, str]] = Counter()
_WORKER_KEY = "api_fuzz_answers"


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A worker hands its counts to the controller."""
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output[_WORKER_KEY] = [[*key, n] for key, n in ANSWERS.items()]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """The controller adds up what a finished worker counted."""
    for role, operation, status, n in getattr(node, "workeroutput", {}).get(_WORKER_KEY, []):
        ANSWERS[role, operation, status] += n


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    roles = sorted({role for role, _, _ in ANSWERS})
    for role in roles:
        operations = {operation for who, operation, _ in ANSWERS if who == role}
        classes: Counter[str] = Counter()
        for (who, _, status), n in ANSWERS.items():
            if who == role:
                classes[status] += n
        terminalreporter.write_line(
            f"api fuzz, {role}: {len(operations)} operations, {sum(classes.values())} "
            "requests (" + ", ".join(f"{c} {n}" for c, n in sorted(classes.items())) + ")")
