"""A real SMTP server on loopback (aiosmtpd, in a thread of the test process) that
keeps every message it accepts, so tests read the mail the product sends as a
person's mailbox would."""

from __future__ import annotations

import email
import email.policy
import ipaddress
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests import pki
from tests.processes import free_port


@dataclass
class Received:
    """One accepted message: the envelope's recipients and the parsed message."""

    recipients: list[str]
    message: EmailMessage

    @property
    def text(self) -> str:
        body = self.message.get_body(("plain",))
        return body.get_content().replace("\r\n", "\n") if body is not None else ""


class SmtpServer:
    """aiosmtpd on ``host`` and a free port, started at once; :meth:`stop` ends it.

    :param tls: a server certificate (:func:`server_certificate`): with ``implicit``
        the connection is TLS from the start (SMTPS), otherwise STARTTLS is required.
    :param credentials: ``(username, password)`` that must sign in before sending.
    """

    def __init__(self, host: str = "127.0.0.1", *, tls: ServerCertificate | None = None,
                 implicit: bool = False, credentials: tuple[str, str] | None = None) -> None:
        try:
            from aiosmtpd.controller import Controller
        except ImportError:
            pytest.fail("aiosmtpd is not installed: run the README's test command, which "
                        "installs requirements-dev.txt")
        self.host, self.port = host, free_port(host)
        self.received: list[Received] = []
        self._arrived = threading.Condition()
        options: dict[str, Any] = {}
        if tls is not None and implicit:
            options["ssl_context"] = tls.server_context()
        elif tls is not None:
            options.update(tls_context=tls.server_context(), require_starttls=True)
        if credentials is not None:
            options.update(authenticator=_Authenticator(*credentials), auth_required=True)
        # A fixed name: aiosmtpd would otherwise ask the resolver for this host's name.
        self._controller = Controller(self, hostname=host, port=self.port,
                                      server_hostname="mail.rpcc-test.invalid", **options)
        self._controller.start()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self._arrived:
            self.received.append(Received(list(envelope.rcpt_tos), message))
            self._arrived.notify_all()
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[Received]:
        """Every message so far whose envelope names ``address``."""
        with self._arrived:
            return [r for r in self.received if address in r.recipients]

    def wait_for(self, address: str, count: int = 1, timeout: float = 10.0) -> Received:
        """The ``count``-th message to ``address``, waiting for it if need be."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                mine = [r for r in self.received if address in r.recipients]
                if len(mine) >= count:
                    return mine[count - 1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no message {count} to {address} after {timeout}s; "
                                         f"received: {[r.recipients for r in self.received]}")
                self._arrived.wait(left)

    def stop(self) -> None:
        self._controller.stop()


class _Authenticator:
    def __init__(self, username: str, password: str) -> None:
        self.expected = (username.encode(), password.encode())

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str,
                 auth_data: Any) -> Any:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        ok = isinstance(auth_data, LoginPassword) and (
            (auth_data.login, auth_data.password) == self.expected)
        return AuthResult(success=ok, handled=False)


@dataclass
class ServerCertificate:
    """A certificate for an IP address, issued by a private root, as files."""

    ca_bundle: str
    cert_file: str
    key_file: str

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def server_certificate(directory: Path, address: str) -> ServerCertificate:
    """A leaf for ``address`` (an IP SAN: clients check the name they connect to)."""
    root = pki.root("Test Mail Root")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
            .issuer_name(root.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
            .sign(root.key, hashes.SHA256()))
    files = {"ca.pem": root.pem, "cert.pem": pki.pem(cert), "key.pem": pki.key_pem(key)}
    for name, text in files.items():
        (directory / name).write_text(text)
    return ServerCertificate(str(directory / "ca.pem"), str(directory / "cert.pem"),
                             str(directory / "key.pem"))
