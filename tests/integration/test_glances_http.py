"""Glances read directly at its ``glances_url`` (HTTP and HTTPS) by servers on
loopback that answer the way the tests need: a trickled answer cut at the node's
deadline, chunked and oversized answers, a redirect not followed, a connection kept
for a read's requests, TLS verified against the system's roots or the given ones."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from app.services.monitoring import glances
from app.services.monitoring.glances import GlancesError
from tests.glances import recorded_glances as recorded_glances  # noqa: F401  (fixture)
from tests.glances import recorded_v4, trickling
from tests.smtp import server_certificate

TRICKLE_ADDRESS = "127.0.0.121"
SCRIPTED_ADDRESS = "127.0.0.122"
TLS_ADDRESS = "127.0.0.123"
#: The recorded Glances 4 answers the servers here give.
ANSWERS = {f"/api/4/{plugin}": json.dumps(value).encode()
           for plugin, value in recorded_v4("4.3.0.4").items()}
EXPECTED = glances.parse("4", recorded_v4("4.3.0.4"))


def deadline(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


class Scripted:
    """A server on loopback whose answers come from ``answer(path, wfile)`` (it
    writes the whole answer, head included); it closes a connection after each answer
    when ``close_each``, whatever the answer said, and counts connections."""

    def __init__(self, answer: Callable[[str, Any], None], *, close_each: bool = False,
                 context: ssl.SSLContext | None = None, address: str = SCRIPTED_ADDRESS
                 ) -> None:
        self.requests: list[str] = []
        self.connections: set[tuple[str, int]] = set()
        seen, connections = self.requests, self.connections

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                seen.append(self.path)
                connections.add(self.client_address)
                answer(self.path, self.wfile)
                self.wfile.flush()
                if close_each:
                    self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((address, 0), Handler)
        self.server.daemon_threads = True
        if context is not None:
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture()
def scripted() -> Iterator[Callable[..., Scripted]]:
    started: list[Scripted] = []

    def make(*args: Any, **kwargs: Any) -> Scripted:
        server = Scripted(*args, **kwargs)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def recorded(path: str, wfile: Any) -> None:
    """Glances 4's answer for ``path`` with a Content-Length, or its 404."""
    body = ANSWERS.get(path, b'{"detail": "Not Found"}')
    status = "200 OK" if path in ANSWERS else "404 Not Found"
    wfile.write(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


def chunked(body: bytes, wfile: Any, size: int = 1000) -> None:
    wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
    for start in range(0, len(body), size):
        part = body[start:start + size]
        wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
    wfile.write(b"0\r\n\r\n")


def test_an_answer_trickling_over_http_is_cut_at_the_nodes_deadline():
    """A node that sends its answer a byte at a time cannot hold the reading thread
    past the node's time: the read ends while the node is still sending."""
    with trickling(TRICKLE_ADDRESS) as trickle:
        transport = glances.HttpTransport(f"http://{TRICKLE_ADDRESS}:{trickle.port}",
                                          deadline(2))
        with pytest.raises(GlancesError, match="did not answer in time") as raised:
            glances.read(transport, "3")
        assert not raised.value.absent
        assert not trickle.finished.is_set()


def test_a_read_keeps_one_connection_and_ignores_proxies_from_the_environment(
        recorded_glances, monkeypatch):  # noqa: F811 - the fixture imported above
    server = recorded_glances("4.3.0.4", SCRIPTED_ADDRESS)
    # Were the environment's proxy used, the read would fail: nothing listens there.
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.99:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)

    assert glances.read(glances.HttpTransport(server.url, deadline()), "4") == ("4", EXPECTED)
    assert server.requests == [f"/api/4/{plugin}" for plugin in glances.PLUGINS]
    assert len(server.connections) == 1


def test_a_connection_the_server_closes_unannounced_is_replaced(scripted):
    server = scripted(recorded, close_each=True)

    transport = glances.HttpTransport(f"http://{SCRIPTED_ADDRESS}:{server.port}/", deadline())
    assert glances.read(transport, "4") == ("4", EXPECTED)
    assert len(server.connections) == len(glances.PLUGINS)


def test_chunked_answers_are_read_under_a_prefix(scripted):
    def answer(path: str, wfile: Any) -> None:
        body = ANSWERS.get(path.removeprefix("/glances"))
        if body is None:
            recorded("/missing", wfile)
        else:
            chunked(body, wfile)

    server = scripted(answer)
    transport = glances.HttpTransport(f"http://{SCRIPTED_ADDRESS}:{server.port}/glances",
                                      deadline())
    assert glances.read(transport, "4") == ("4", EXPECTED)
    assert server.requests[0] == "/glances/api/4/cpu"


@pytest.mark.parametrize("framing", ["content-length", "chunked", "to the end"])
def test_an_answer_over_a_mebibyte_is_not_glances(scripted, framing):
    body = b"[" + b"0," * (1 << 19) + b"0]"

    def answer(path: str, wfile: Any) -> None:
        if framing == "chunked":
            chunked(body, wfile, size=1 << 16)
            return
        length = f"Content-Length: {len(body)}\r\n" if framing == "content-length" else ""
        wfile.write(f"HTTP/1.0 200 OK\r\n{length}\r\n".encode() + body)

    server = scripted(answer, close_each=True)
    transport = glances.HttpTransport(f"http://{SCRIPTED_ADDRESS}:{server.port}", deadline())
    with pytest.raises(GlancesError, match="more than 1024 KiB") as raised:
        glances.read(transport, "4")
    assert raised.value.absent


def test_a_redirect_is_not_followed(scripted):
    def answer(path: str, wfile: Any) -> None:
        wfile.write(f"HTTP/1.1 301 Moved Permanently\r\nLocation: http://127.0.0.99:9{path}"
                    "\r\nContent-Length: 0\r\n\r\n".encode())

    server = scripted(answer)
    transport = glances.HttpTransport(f"http://{SCRIPTED_ADDRESS}:{server.port}", deadline())
    with pytest.raises(GlancesError, match="answered HTTP 301 for cpu"):
        glances.read(transport, "4")
    assert server.requests == ["/api/4/cpu"]


def test_nothing_listening_or_something_other_than_http_is_no_glances(scripted):
    closed = socket.create_server((SCRIPTED_ADDRESS, 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(GlancesError, match="no Glances: .* refuses or drops") as raised:
        glances.read(glances.HttpTransport(f"http://{SCRIPTED_ADDRESS}:{port}", deadline()),
                     None)
    assert raised.value.absent

    def answer(path: str, wfile: Any) -> None:
        wfile.write(b"SSH-2.0-OpenSSH_9.2\r\n")

    server = scripted(answer, close_each=True)
    with pytest.raises(GlancesError, match="does not answer HTTP") as raised:
        glances.read(glances.HttpTransport(f"http://{SCRIPTED_ADDRESS}:{server.port}",
                                           deadline()), None)
    assert raised.value.absent


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory):
    """A certificate for the TLS server's address from a private root."""
    return server_certificate(Path(tmp_path_factory.mktemp("glances-tls")), TLS_ADDRESS)


def test_https_verifies_the_server_against_the_system_roots_or_the_given_ones(
        scripted, certificate):
    server = scripted(recorded, context=certificate.server_context(), address=TLS_ADDRESS)
    url = f"https://{TLS_ADDRESS}:{server.port}"

    with pytest.raises(GlancesError, match="TLS with .* failed: .*certificate") as raised:
        glances.read(glances.HttpTransport(url, deadline()), "4")
    assert not raised.value.absent
    assert server.requests == []

    trusting = ssl.create_default_context(cafile=certificate.ca_bundle)
    assert glances.read(glances.HttpTransport(url, deadline(), trusting), "4") == ("4",
                                                                                   EXPECTED)
    assert len(server.connections) == 1

    # The right root is not enough: the certificate must name the address asked.
    elsewhere = scripted(recorded, context=certificate.server_context(),
                         address="127.0.0.124")
    with pytest.raises(GlancesError, match="TLS with .* failed: .*(match|mismatch)"):
        glances.read(glances.HttpTransport(f"https://127.0.0.124:{elsewhere.port}",
                                           deadline(), trusting), "4")
