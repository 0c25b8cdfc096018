"""The site check's HTTP/1.1 exchange over a channel (here one end of a socket pair,
which offers what a forwarded channel does: sendall, recv, settimeout): the request
it sends, the status it reads, TLS with the site's name as SNI, and its one deadline."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from app.connector.http import ExchangeFailed, request_status
from tests import pki


class Pair:
    """A socket pair: ``ours`` plays the channel, a thread answers on ``theirs``."""

    def __init__(self) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.threads: list[threading.Thread] = []

    def serve(self, answer: Callable[[socket.socket, bytes], None]) -> None:
        """Read the request's head on ``theirs``, then let ``answer`` reply."""

        def run() -> None:
            head = b""
            while b"\r\n\r\n" not in head and (data := self.theirs.recv(4096)):
                head += data
            answer(self.theirs, head)

        self.start(run)

    def start(self, run: Callable[[], None]) -> None:
        thread = threading.Thread(target=run, daemon=True)
        self.threads.append(thread)
        thread.start()

    def close(self) -> None:
        """Hang up our end (a server still reading sees the end), let the server
        threads finish, then close both ends."""
        self.ours.shutdown(socket.SHUT_RDWR)
        for thread in self.threads:
            thread.join(timeout=10)
        self.ours.close()
        self.theirs.close()


@pytest.fixture()
def pair() -> Iterator[Pair]:
    sockets = Pair()
    yield sockets
    sockets.close()


def test_the_request_names_the_site_and_the_status_is_read(pair):
    seen: list[bytes] = []

    def answer(sock: socket.socket, head: bytes) -> None:
        seen.append(head)
        sock.sendall(b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://x/\r\n\r\n")

    pair.serve(answer)
    result = request_status("shop.example.com", tls=False, timeout=10)(pair.ours)
    assert result.status == 301 and result.certificate is None and result.elapsed_ms >= 0
    lines = seen[0].decode().split("\r\n")
    assert lines[0] == "GET / HTTP/1.1"
    assert "Host: shop.example.com" in lines and "Connection: close" in lines


@pytest.mark.parametrize(("reply", "status"), [
    (b"HTTP/1.1 204\r\n\r\n", 204),  # no reason phrase
    (b"HTTP/1.0 503 Service Unavailable\r\n\r\n", 503),
])
def test_statuses_are_read_as_sent(pair, reply, status):
    pair.serve(lambda sock, _: sock.sendall(reply))
    assert request_status("a.example.com", tls=False, timeout=10)(pair.ours).status == status


@pytest.mark.parametrize(("reply", "message"), [
    (b"", "the proxy closed the connection without answering"),
    (b"HTTP/1.1 20", "the answer ended in its status line"),
    (b"SSH-2.0-OpenSSH\r\n", "the answer is not HTTP/1.x"),
    (b"x" * 9000, "the answer is not HTTP/1.x"),
])
def test_what_is_no_http_answer_says_so(pair, reply, message):
    def answer(sock: socket.socket, _: bytes) -> None:
        sock.sendall(reply)
        sock.shutdown(socket.SHUT_WR)

    pair.serve(answer)
    with pytest.raises(ExchangeFailed) as failed:
        request_status("a.example.com", tls=False, timeout=10)(pair.ours)
    assert str(failed.value) == message


def test_a_trickling_answer_is_cut_at_the_deadline_and_told_slow_once(pair):
    stop = threading.Event()

    def trickle(sock: socket.socket, _: bytes) -> None:
        sock.sendall(b"HTTP/1.1 2")
        while not stop.wait(0.05):  # a byte now and then, never the end of the line
            sock.sendall(b"0")

    pair.serve(trickle)
    slow: list[bool] = []
    try:
        with pytest.raises(TimeoutError):
            request_status("a.example.com", tls=False, timeout=0.6, slow_after=0.2,
                           on_slow=lambda: slow.append(True))(pair.ours)
    finally:
        stop.set()
        pair.threads[0].join(timeout=10)
    assert slow == [True]


def test_tls_sends_the_site_name_and_returns_the_served_certificate(pair, tmp_path: Path):
    root = pki.root("Channel Root")
    leaf, key = pki.leaf(root, ["tls.example.com"])
    (tmp_path / "chain.pem").write_text(pki.pem(leaf))
    (tmp_path / "key.pem").write_text(pki.key_pem(key))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "chain.pem", tmp_path / "key.pem")
    names: list[str | None] = []
    server.sni_callback = lambda _sock, name, _context: names.append(name)

    def run() -> None:
        # Detached from the pair's socket: closed here, and the pair's is left alone.
        with server.wrap_socket(pair.theirs.dup(), server_side=True) as tls:
            head = b""
            while b"\r\n\r\n" not in head and (data := tls.recv(4096)):
                head += data
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    pair.start(run)
    result = request_status("tls.example.com", tls=True, timeout=10)(pair.ours)
    assert result.status == 200
    assert names == ["tls.example.com"]
    assert result.certificate == leaf.public_bytes(Encoding.DER)


def test_a_failed_handshake_says_why_without_naming_files(pair):
    """A plain HTTP server on the TLS port: it answers the ClientHello with text."""
    pair.theirs.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    with pytest.raises(ExchangeFailed) as failed:
        request_status("a.example.com", tls=True, timeout=10)(pair.ours)
    assert str(failed.value).startswith("TLS handshake failed (")
    assert ".c" not in str(failed.value)
