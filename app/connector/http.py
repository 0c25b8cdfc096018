"""Asking a node's proxy for a site as a visitor would, from the node itself: one
HTTP/1.1 request over a channel the pool forwards to the proxy's port
(:meth:`~app.connector.pool.SSHConnectionPool.tunnel`), over TLS when the site
serves it.

A forwarded channel is no socket, so TLS runs on memory buffers
(:class:`ssl.SSLObject`) with the site's name as SNI.  The chain is not verified:
the question is what the node serves, not whether a browser would trust it, so
the answer carries the served certificate for the caller to compare with the one
it issued.

Only the status line is read: it says whether the proxy (and the site's backend
behind it) answers, and a body could be as large or as slow as a tenant makes it.
One deadline bounds the whole exchange, each read waiting only for what is left of
it, so a backend that trickles bytes cannot hold a check past it.
"""

from __future__ import annotations

import functools
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import paramiko

from app.connector.errors import ConnectorError

T = TypeVar("T")

USER_AGENT = "rpcc-uptime/1"
#: The most read while waiting for the status line (nginx's own lines are short).
MAX_STATUS_LINE = 8192
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: |\r)")
_RECV_SIZE = 16384


class ExchangeFailed(ConnectorError):
    """The proxy took the connection but gave no HTTP answer: TLS failed, it closed
    the connection, or what it sent is not HTTP.  The message says which in words
    that name no address, port or path."""


@dataclass(frozen=True)
class Answer:
    """The proxy's answer: its status, the milliseconds from the channel's opening to
    the status line (the TLS handshake included), and over TLS the served leaf
    certificate (DER)."""

    status: int
    elapsed_ms: float
    certificate: bytes | None = None


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One client context for every check: no chain or name verification (see the
    module's docstring), HTTP/1.1 offered by ALPN so an HTTP/2 site answers in it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context


def request_status(hostname: str, *, tls: bool, timeout: float, path: str = "/",
                   on_open: Callable[[], None] | None = None,
                   on_slow: Callable[[], None] | None = None, slow_after: float = 1.0,
                   ) -> Callable[[paramiko.Channel], Answer]:
    """A ``body`` for ``tunnel``: ``GET path`` for ``hostname`` (the Host header and,
    over TLS, the SNI name) within ``timeout`` seconds of the channel's opening.

    :param on_open: called once the channel is open, before anything is sent: the
        node's SSH connection works, whatever the proxy answers.
    :param on_slow: called once if the answer has not come ``slow_after`` seconds
        after the opening: the caller may stop counting this exchange as work, since
        from then on it mostly waits.
    :raises TimeoutError: when the deadline passes (``tunnel`` turns it into
        :class:`~app.connector.errors.CommandTimeout`).
    :raises ExchangeFailed: when no HTTP answer comes.
    """

    def body(channel: paramiko.Channel) -> Answer:
        started = time.monotonic()
        if on_open is not None:
            on_open()
        stream = _Stream(channel, started + timeout, on_slow, started + slow_after)
        try:
            certificate = stream.start_tls(hostname) if tls else None
            stream.send(f"GET {path} HTTP/1.1\r\nHost: {hostname}\r\n"
                        f"User-Agent: {USER_AGENT}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
                        .encode("ascii"))
            status = stream.status()
        except TimeoutError:
            raise
        except (OSError, EOFError):
            # Paramiko's word for a channel the other side closed while we wrote.
            raise ExchangeFailed("the connection was closed before an answer came") from None
        return Answer(status, round((time.monotonic() - started) * 1000, 1), certificate)

    return body


class _Stream:
    """The channel, plain or through TLS, every read bounded by one deadline."""

    def __init__(self, channel: paramiko.Channel, deadline: float,
                 on_slow: Callable[[], None] | None, slow_at: float) -> None:
        self.channel = channel
        self.deadline = deadline
        self.on_slow = on_slow
        self.slow_at = slow_at
        self.tls: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()

    def _recv(self) -> bytes:
        """The next bytes from the channel, waiting at most until the deadline (and
        telling ``on_slow`` on the way when the slow mark passes)."""
        while True:
            now = time.monotonic()
            if now >= self.deadline:
                raise TimeoutError("the deadline passed")
            wait = self.deadline - now
            if self.on_slow is not None:
                if now >= self.slow_at:
                    on_slow, self.on_slow = self.on_slow, None
                    on_slow()
                    continue
                wait = min(wait, self.slow_at - now)
            self.channel.settimeout(wait)
            try:
                data: bytes = self.channel.recv(_RECV_SIZE)
            except TimeoutError:
                continue  # the slow mark or the deadline, seen above
            return data

    def _flush(self) -> None:
        pending = self._outgoing.read()
        if pending:
            self.channel.settimeout(max(0.001, self.deadline - time.monotonic()))
            self.channel.sendall(pending)

    def _tls_call(self, operation: Callable[[], T]) -> T:
        """Run an SSLObject operation, moving bytes between it and the channel until
        it no longer wants to read."""
        while True:
            try:
                result = operation()
            except ssl.SSLWantReadError:
                self._flush()
                data = self._recv()
                if data:
                    self._incoming.write(data)
                else:
                    self._incoming.write_eof()
                continue
            self._flush()
            return result

    def start_tls(self, hostname: str) -> bytes:
        """Handshake with ``hostname`` as SNI; the served leaf certificate (DER)."""
        tls = _tls_context().wrap_bio(self._incoming, self._outgoing, server_hostname=hostname)
        try:
            self._tls_call(tls.do_handshake)
        except ssl.SSLError as exc:
            raise ExchangeFailed(f"TLS handshake failed ({_tls_reason(exc)})") from None
        certificate = tls.getpeercert(binary_form=True)
        if not certificate:
            raise ExchangeFailed("TLS handshake failed (no certificate was served)")
        self.tls = tls
        return certificate

    def send(self, data: bytes) -> None:
        if self.tls is None:
            self.channel.settimeout(max(0.001, self.deadline - time.monotonic()))
            self.channel.sendall(data)
            return
        tls = self.tls
        try:
            self._tls_call(lambda: tls.write(data))
        except ssl.SSLError as exc:
            raise ExchangeFailed(f"TLS failed ({_tls_reason(exc)})") from None

    def read(self) -> bytes:
        """The next bytes of the answer; empty at its end."""
        if self.tls is None:
            return self._recv()
        tls = self.tls
        try:
            return self._tls_call(lambda: tls.read(_RECV_SIZE))
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""
        except ssl.SSLError as exc:
            raise ExchangeFailed(f"TLS failed ({_tls_reason(exc)})") from None

    def status(self) -> int:
        """The status code of the answer's status line."""
        head = b""
        while b"\r\n" not in head:
            data = self.read()
            if not data:
                raise ExchangeFailed("the proxy closed the connection without answering"
                                     if not head else "the answer ended in its status line")
            head += data
            if len(head) > MAX_STATUS_LINE and b"\r\n" not in head:
                break
        match = _STATUS_LINE.match(head)
        if match is None:
            raise ExchangeFailed("the answer is not HTTP/1.x")
        return int(match.group(1))


def _tls_reason(exc: ssl.SSLError) -> str:
    """OpenSSL's reason code (``TLSV1_ALERT_UNRECOGNIZED_NAME``...) rather than its
    message, which names source files."""
    return str(exc.reason or type(exc).__name__)
