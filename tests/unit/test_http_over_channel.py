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


@pytest.fixture()
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        yield ours, theirs


def serve(sock: socket.socket, answer: Callable[[socket.socket, bytes], None]) -> threading.Thread:
    """Read the request on ``sock`` (its head), then let ``answer`` reply."""

    def run() -> None:
        head = b""
        while b"\r\n\r\n" not in head and (data := sock.recv(4096)):
            head += data
        answer(sock, head)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_the_request_names_the_site_and_the_status_is_read(pair):
    ours, theirs = pair
    seen: list[bytes] = []

    def answer(sock: socket.socket, head: bytes) -> None:
        seen.append(head)
        sock.sendall(b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://x/\r\n\r\n")

    serve(theirs, answer)
    result = request_status("shop.example.com", tls=False, timeout=10)(ours)
    assert result.status == 301 and result.certificate is None and result.elapsed_ms >= 0
    lines = seen[0].decode().split("\r\n")
    assert lines[0] == "GET / HTTP/1.1"
    assert "Host: shop.example.com" in lines and "Connection: close" in lines


@pytest.mark.parametrize(("reply", "status"), [
    (b"HTTP/1.1 204\r\n\r\n", 204),  # no reason phrase
    (b"HTTP/1.0 503 Service Unavailable\r\n\r\n", 503),
])
def test_statuses_are_read_as_sent(pair, reply, status):
    ours, theirs = pair
    serve(theirs, lambda sock, _: sock.sendall(reply))
    assert request_status("a.example.com", tls=False, timeout=10)(ours).status == status


@pytest.mark.parametrize(("reply", "message"), [
    (b"", "the proxy closed the connection without answering"),
    (b"HTTP/1.1 20", "the answer ended in its status line"),
    (b"SSH-2.0-OpenSSH\r\n", "the answer is not HTTP/1.x"),
    (b"x" * 9000, "the answer is not HTTP/1.x"),
])
def test_what_is_no_http_answer_says_so(pair, reply, message):
    ours, theirs = pair

    def answer(sock: socket.socket, _: bytes) -> None:
        sock.sendall(reply)
        sock.shutdown(socket.SHUT_WR)

    serve(theirs, answer)
    with pytest.raises(ExchangeFailed) as failed:
        request_status("a.example.com", tls=False, timeout=10)(ours)
    assert str(failed.value) == message


def test_a_trickling_answer_is_cut_at_the_deadline_and_told_slow_once(pair):
    ours, theirs = pair
    stop = threading.Event()

    def trickle(sock: socket.socket, _: bytes) -> None:
        sock.sendall(b"HTTP/1.1 2")
        while not stop.wait(0.05):  # a byte now and then, never the end of the line
            sock.sendall(b"0")

    serve(theirs, trickle)
    slow: list[bool] = []
    try:
        with pytest.raises(TimeoutError):
            request_status("a.example.com", tls=False, timeout=0.6, slow_after=0.2,
                           on_slow=lambda: slow.append(True))(ours)
    finally:
        stop.set()
    assert slow == [True]


def test_tls_sends_the_site_name_and_returns_the_served_certificate(pair, tmp_path: Path):
    ours, theirs = pair
    root = pki.root("Channel Root")
    leaf, key = pki.leaf(root, ["tls.example.com"])
    (tmp_path / "chain.pem").write_text(pki.pem(leaf))
    (tmp_path / "key.pem").write_text(pki.key_pem(key))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "chain.pem", tmp_path / "key.pem")
    names: list[str | None] = []
    server.sni_callback = lambda _sock, name, _context: names.append(name)

    def run() -> None:
        tls = server.wrap_socket(theirs, server_side=True)
        head = b""
        while b"\r\n\r\n" not in head and (data := tls.recv(4096)):
            head += data
        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    result = request_status("tls.example.com", tls=True, timeout=10)(ours)
    thread.join(timeout=10)
    assert result.status == 200
    assert names == ["tls.example.com"]
    assert result.certificate == leaf.public_bytes(Encoding.DER)


def test_a_failed_handshake_says_why_without_naming_files(pair):
    """A plain HTTP server on the TLS port: it answers the ClientHello with text."""
    ours, theirs = pair
    theirs.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    with pytest.raises(ExchangeFailed) as failed:
        request_status("a.example.com", tls=True, timeout=10)(ours)
    assert str(failed.value).startswith("TLS handshake failed (")
    assert ".c" not in str(failed.value)
