"""HTTP-01 across a pool: the token goes to every active node before the CA is told
to look, since the CA may ask any node the domain points at, and it is removed from
every node afterwards, whatever happened.

Tokens live at ``<acme_webroot>/.well-known/acme-challenge/<token>`` on each node
(beside the managed directory, so a deployment swapping it keeps them); every engine
serves that location on every site.  Files are 0644 and directories 0755: the proxy's
unprivileged workers read them.

Hosts come in as plain values (a name, an SSH target, the challenge directory): which
nodes serve a site, and where, is the certificates service's business.
"""

from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from app.acme.client import AcmeIssueError
from app.connector import (
    AuthenticationFailed,
    ConnectorError,
    HostKeyChanged,
    SSHConnectionPool,
    SSHTarget,
    UnreachableError,
)

logger = logging.getLogger(__name__)

CHALLENGE_PATH = ".well-known/acme-challenge"
# RFC 8555 section 8.3: a token is base64url without padding; it becomes a file name.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
MAX_PARALLEL = 16
# Failures after which the other tokens of a node are not even tried: the node
# cannot be talked to at all.  Any other (a stall, a file that cannot go) is one token's.
_NODE_GONE = (UnreachableError, AuthenticationFailed, HostKeyChanged)


@dataclass(frozen=True)
class TokenHost:
    """A node that must serve the tokens."""

    name: str
    target: SSHTarget
    challenge_dir: str


def check_token(token: str) -> str:
    """The token as a file name, or an error if the CA sent anything else."""
    if not _TOKEN.fullmatch(token):
        raise AcmeIssueError("ca_refused", "the CA sent an HTTP-01 token that is not "
                             "base64url; refusing to use it as a file name")
    return token


def _fan_out(hosts: Sequence[TokenHost],
             work: Callable[[TokenHost], None]) -> dict[str, ConnectorError]:
    """Run ``work`` on every host in parallel; the hosts it failed on, and why."""

    def attempt(host: TokenHost) -> ConnectorError | None:
        try:
            work(host)
        except ConnectorError as exc:
            return exc
        return None

    with ThreadPoolExecutor(max_workers=max(1, min(MAX_PARALLEL, len(hosts))),
                            thread_name_prefix="acme-http01") as executor:
        outcomes = list(executor.map(attempt, hosts))
    return {host.name: exc for host, exc in zip(hosts, outcomes, strict=True)
            if exc is not None}


def publish(pool: SSHConnectionPool, hosts: Sequence[TokenHost], tokens: Mapping[str, str]) -> None:
    """Write every token (``{token: key authorization}``) on every host.

    :raises AcmeIssueError: ``challenge_unreachable`` naming the nodes that did not
        take them.
    """
    if not hosts:
        raise AcmeIssueError("challenge_unreachable", "the site's pool has no active proxy "
                             "node to serve the HTTP-01 token")
    files = {check_token(token): value.encode()
             for token, value in tokens.items()}

    def write(host: TokenHost) -> None:
        pool.mkdir_p(host.target, host.challenge_dir, mode=0o755)
        for name, data in files.items():
            pool.write_file(host.target, posixpath.join(host.challenge_dir, name), data,
                            mode=0o644)

    failed = _fan_out(hosts, write)
    if failed:
        names = sorted(failed)
        first = names[0]
        raise AcmeIssueError(
            "challenge_unreachable",
            f"could not place the HTTP-01 token on node{'s' if len(names) > 1 else ''} "
            f"{', '.join(names)} ({first}: {failed[first]}); every active node of the "
            "pool must serve it, since the CA may ask any of them")


def withdraw(pool: SSHConnectionPool, hosts: Sequence[TokenHost],
             tokens: Mapping[str, str]) -> None:
    """Remove the tokens from every host; a node that cannot be reached keeps them
    (they are public and useless once validated), which is logged, not raised.  A
    token that cannot be removed (a removal that timed out) keeps only itself: the
    node's other tokens are still removed."""
    names = [token for token in tokens if _TOKEN.fullmatch(token)]

    def remove(host: TokenHost) -> None:
        for name in names:
            try:
                pool.remove_tree(host.target, posixpath.join(host.challenge_dir, name))
            except _NODE_GONE:
                raise
            except ConnectorError as exc:
                logger.warning("an HTTP-01 token was left on node %s: %s", host.name, exc)

    for node, exc in _fan_out(hosts, remove).items():
        logger.warning("HTTP-01 tokens left on node %s: %s", node, exc)


@contextmanager
def published(pool: SSHConnectionPool, hosts: Sequence[TokenHost],
              tokens: Mapping[str, str]) -> Iterator[None]:
    """Tokens on every host for the duration of the block, removed afterwards even if
    placing them failed half-way."""
    try:
        publish(pool, hosts, tokens)
        yield
    finally:
        withdraw(pool, hosts, tokens)
