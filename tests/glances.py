"""Glances for the metrics tests: the real one (Debian's Glances 3, version 3.3) and
a server of recorded Glances 4 answers.

Real Glances must never be started plainly (RECIPES.md): at start it asks the cloud
metadata address, the default gateway and a public-IP service.  :class:`Glances`
starts it through a launcher that makes ``requests`` unimportable before Glances
loads, with a configuration that turns those plugins off, bound to one loopback
address; tests run inside the loopback-only network namespace besides.  Debian's
Glances is importable only by the system Python (``/usr/bin/python3``), and its web
server needs ``python3-bottle``.

:class:`RecordedGlances` answers ``/api/4/<plugin>`` with what a real Glances 4
answered (``tests/unit/data/glances_v4_*.json``, see ``glances_sources.md`` there)
and 404 to anything else, as Glances 4 does for ``/api/3``; it keeps connections
open like Glances 4's server, so readers over one channel are exercised too.

:func:`trickling` is a node that sends its answer a byte at a time.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import tempfile
import threading
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.processes import free_port, start, stop

SYSTEM_PYTHON = "/usr/bin/python3"
DATA = Path(__file__).resolve().parent / "unit" / "data"
#: Recorded answers of real Glances 4 servers, by version.
RECORDED_V4 = ("4.3.0.4", "4.4.0_dev5")

#: Plugins that would reach beyond the machine (or are useless here), disabled.
_DISABLED = "cloud,ip,ports,docker,wifi"
_CONFIG = """\
[global]
check_update=false
[cloud]
disable=True
[ip]
disable=True
public_ip_disabled=True
[ports]
disable=True
port_default_gateway=False
"""
_LAUNCHER = """\
import sys
# Glances must not reach any network service: without requests its cloud, IP and
# update checks have nothing to send with.
sys.modules["requests"] = None
from glances import main
sys.exit(main())
"""


def require_glances() -> None:
    """Fail (never skip) when Debian's Glances or its web server is missing."""
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import glances, bottle"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.fail("Glances' web server cannot start (apt-get install glances "
                    f"python3-bottle; scripts/setup-system.sh test does): {probe.stderr}")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


class Glances:
    """A real Glances 3 REST API on ``address:port`` (a free port by default)."""

    def __init__(self, address: str = "127.0.0.1", port: int | None = None) -> None:
        require_glances()
        self.address = address
        self.port = port or free_port(address)
        self.root = Path(tempfile.mkdtemp(prefix="rpcc-glances-"))
        (self.root / "glances.conf").write_text(_CONFIG)
        (self.root / "launch.py").write_text(_LAUNCHER)
        self.process = start(
            [SYSTEM_PYTHON, str(self.root / "launch.py"), "-C", str(self.root / "glances.conf"),
             "-w", "--disable-webui", "-B", address, "-p", str(self.port),
             "--disable-autodiscover", "--disable-check-update",
             "--disable-plugin", _DISABLED],
            ready=lambda _process: _answers(f"{self.url}/api/3/status"),
            log=self.root / "glances.log", timeout=30, stdin=subprocess.DEVNULL)

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def get(self, plugin: str) -> Any:
        """What Glances answers now for ``plugin`` (``/api/3/<plugin>``)."""
        with urllib.request.urlopen(f"{self.url}/api/3/{plugin}", timeout=10) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        stop(self.process)
        with contextlib.suppress(OSError):
            for path in self.root.iterdir():
                path.unlink()
            self.root.rmdir()


def recorded_v4(version: str) -> dict[str, Any]:
    """The answers of a real Glances ``version``, by plugin."""
    data: dict[str, Any] = json.loads((DATA / f"glances_v4_{version}.json").read_text())
    return data


class RecordedGlances:
    """Answers ``/api/4/<plugin>`` from recorded answers, on ``address:port``."""

    def __init__(self, answers: dict[str, Any], address: str = "127.0.0.1") -> None:
        self.answers = answers
        self.requests: list[str] = []
        self.connections: set[tuple[str, int]] = set()
        recorded, seen, connections = answers, self.requests, self.connections

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                seen.append(self.path)
                connections.add(self.client_address)
                prefix, _, plugin = self.path.rpartition("/")
                found = prefix == "/api/4" and plugin in recorded
                body = json.dumps(recorded[plugin] if found else {"detail": "Not Found"})
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body.encode())))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((address, 0), Handler)
        self.server.daemon_threads = True
        self.address, self.port = address, int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


S = TypeVar("S", "Glances", "RecordedGlances")


@contextlib.contextmanager
def _stopped_at_end(start: Callable[..., S]) -> Iterator[Callable[..., S]]:
    """``start``, remembering what it started: every one is stopped when the block
    ends, even if stopping another fails."""
    with contextlib.ExitStack() as teardown:

        def make(*args: Any, **kwargs: Any) -> S:
            server = start(*args, **kwargs)
            teardown.callback(server.stop)
            return server

        yield make


@pytest.fixture()
def glances_factory() -> Iterator[Callable[..., Glances]]:
    """Start real Glances servers (``glances_factory("127.0.0.2")``); all stopped by
    PID after the test."""
    with _stopped_at_end(Glances) as make:
        yield make


@pytest.fixture()
def recorded_glances() -> Iterator[Callable[..., RecordedGlances]]:
    """Servers of recorded Glances 4 answers (``recorded_glances("4.3.0.4")``),
    stopped after the test."""

    def start(version: str, address: str = "127.0.0.1") -> RecordedGlances:
        return RecordedGlances(recorded_v4(version), address)

    with _stopped_at_end(start) as make:
        yield make


class Trickle:
    """Answers its first connection with the head of a 1000-byte answer, then a byte
    every 50 ms, until told to stop: a node trickling its answer.  ``finished`` is
    set only once it sent every byte."""

    def __init__(self, address: str) -> None:
        self.listener = socket.create_server((address, 0))
        self.port = int(self.listener.getsockname()[1])
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
                break
            except TimeoutError:
                continue
        else:
            return
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            for _ in range(1000):
                if self._stop.wait(0.05):
                    return
                try:
                    conn.sendall(b" ")
                except OSError:
                    return
            self.finished.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.listener.close()


@contextlib.contextmanager
def trickling(address: str) -> Iterator[Trickle]:
    """A :class:`Trickle` on ``address``, stopped when the block ends."""
    trickle = Trickle(address)
    try:
        yield trickle
    finally:
        trickle.stop()
