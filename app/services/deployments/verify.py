"""Seeing that a node serves a new configuration, over plain HTTP to the node's own
port: no database and no SSH.  Right after a reload the old workers may still be the
ones answering, so a single good answer proves nothing; the probe's token and the old
generation's idle connection say when the new one is really live.
"""

from __future__ import annotations

import http.client
import logging
import socket
import time
from select import POLLHUP, POLLIN, poll

from app.engines.base import PROBE_HOST, PROBE_PATH

logger = logging.getLogger(__name__)

# After a reload: how long the old generation may still answer (nginx's master lets
# it accept for 100 ms after starting the new one), unless it is seen to retire
# sooner, then a moment for the other old workers told at the same instant, then how
# many fresh connections in a row must see the new configuration.
PROBE_SETTLE_SECONDS = 0.15


PROBE_GRACE_SECONDS = 0.01


PROBE_CONFIRMATIONS = 3


PROBE_INTERVAL_SECONDS = 0.01


# How long a site answering 5xx is asked again before that is taken as its answer.
SITE_ERROR_RECHECK_SECONDS = 0.5


class OldGeneration:
    """An idle keep-alive connection to the node's HTTP port, opened before the
    reload: the workers running the previous configuration hold it.

    On a reload, nginx's master starts the new workers, lets the old ones accept for
    another 100 ms, then tells them all at once to shut down gracefully; each first
    closes its listening sockets, then its idle connections.  This connection closing
    therefore says that the previous generation no longer accepts.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    def attach(cls, address: str, port: int, timeout: float,
               token: str | None) -> OldGeneration | None:
        """A connection held by workers that answer ``token``: those of the version
        this deployment replaces, not of an earlier one still retiring.  None if
        that cannot be had (then verification waits a fixed time instead)."""
        if token is None:
            return None
        conn = http.client.HTTPConnection(address, port, timeout=timeout)
        try:
            conn.request("GET", PROBE_PATH, headers={"Host": PROBE_HOST,
                                                     "User-Agent": "rpcc-verify/1"})
            response = conn.getresponse()
            body = response.read(65536).decode(errors="replace")
            if response.status != 200 or body.strip() != token or response.will_close \
                    or not response.isclosed() or conn.sock is None:
                conn.close()
                return None
            sock, conn.sock = conn.sock, None  # ours now; the HTTPConnection forgets it
            return cls(sock)
        except (OSError, http.client.HTTPException):
            conn.close()
            return None

    def wait_retired(self, seconds: float) -> bool:
        """Whether the server closed the connection within ``seconds``."""
        poller = poll()
        poller.register(self.sock, POLLIN | POLLHUP)
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                return False
            try:
                if not self.sock.recv(4096, socket.MSG_DONTWAIT):
                    return True
            except BlockingIOError:
                continue
            except OSError:
                return True  # reset: closed as well

    def close(self) -> None:
        self.sock.close()


def wait_for_probe(address: str, port: int, token: str | None, timeout: float,
                   old: OldGeneration | None = None) -> str:
    """Wait until the node answers with the new configuration's token, and until the
    previous generation of workers no longer accepts: right after a reload the old
    workers may still be the ones answering.  Returns the problem.

    With ``old`` (held by the previous generation since before the reload began),
    nothing is asked of the node until that connection closes: the master lets the
    old workers go only once the new ones run, however long it takes to parse a big
    pool, and waiting on one socket costs no CPU where asking every few milliseconds
    would cost the control plane (and the node) a request each time."""
    if token is None:
        return ""
    deadline = time.monotonic() + timeout
    seen = ""
    confirmed = 0
    needed = PROBE_CONFIRMATIONS
    if old is not None and old.wait_retired(timeout):
        # The other old workers were told at the same instant: a moment for them,
        # then two fresh connections in a row must see the new configuration.
        time.sleep(PROBE_GRACE_SECONDS)
        needed = 1
        old = None
    while True:
        try:
            status, body = _http_get(address, port, PROBE_HOST, PROBE_PATH,
                                     max(0.5, deadline - time.monotonic()))
            if status == 200 and body.strip() == token:
                if confirmed == 0 and needed > 1:
                    # A new worker answered.  Wait for the old ones to stop accepting:
                    # seen directly when they drop our idle connection afterwards (a
                    # connection dropped already went with a generation retiring
                    # before ours started), else (and at most) the time nginx's master
                    # gives them before telling them; then see the new configuration
                    # on fresh connections in a row.
                    if old is None or old.wait_retired(0):
                        time.sleep(PROBE_SETTLE_SECONDS)
                    elif old.wait_retired(PROBE_SETTLE_SECONDS):
                        time.sleep(PROBE_GRACE_SECONDS)
                        needed = 1
                confirmed += 1
                if confirmed > needed:
                    return ""
                continue
            # The old configuration after its connection closed: that close was not
            # the reload's doing, so it proves nothing about who accepts.
            confirmed = 0
            needed = PROBE_CONFIRMATIONS
            seen = f"it answered HTTP {status} {body[:40]!r}"
        except (OSError, http.client.HTTPException) as exc:
            confirmed = 0
            seen = f"no answer: {exc}"
        if time.monotonic() >= deadline:
            return f"the node did not load the new configuration within {timeout:g} s ({seen})"
        time.sleep(PROBE_INTERVAL_SECONDS)


def verify_sites(address: str, port: int, hosts: list[tuple[int, str]],
                 timeout: float) -> tuple[str, dict[int, str]]:
    """Ask the node for each (site id, host): any HTTP answer proves the proxy serves
    the site with the new configuration.  An answer of 500 or more is the site's own
    business (its backend is down or failing): a warning for its owner, never a
    reason to roll back the other tenants' changes.  Retried within ``timeout``:
    right after a reload an old worker may still be exiting.

    Returns the problem ("" when the proxy answered every site) and, per site, its
    warning ("" for none)."""
    problems = []
    warnings: dict[int, str] = {}
    for site_id, host in hosts:
        deadline = time.monotonic() + timeout
        last = warning = ""
        while True:
            try:
                status = _http_status(address, port, host, max(0.5, deadline - time.monotonic()))
                last = ""
                if status < 500:
                    warning = ""
                    break
                if not warning:  # the probe proved the new workers: a short second look
                    deadline = min(deadline, time.monotonic() + SITE_ERROR_RECHECK_SECONDS)
                warning = (f"After the last deployment the proxy answered HTTP {status} for "
                           f"{host}: is its backend up and answering?")
            except (OSError, http.client.HTTPException) as exc:
                last = f"{host} did not answer: {exc}"
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        if last:
            problems.append(last)
        else:
            warnings[site_id] = warning
    return "; ".join(problems), warnings


def _http_status(address: str, port: int, host: str, timeout: float) -> int:
    return _http_get(address, port, host, "/", timeout)[0]


def _http_get(address: str, port: int, host: str, path: str, timeout: float) -> tuple[int, str]:
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host, "User-Agent": "rpcc-verify/1"})
        response = conn.getresponse()
        return response.status, response.read(65536).decode(errors="replace")
    finally:
        conn.close()
