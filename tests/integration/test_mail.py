"""Outgoing mail against a real SMTP server on loopback: plain, STARTTLS and implicit
TLS with a sign-in, and every failure turned into a reason a person can read."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from app.errors import MailFailed
from app.services import mail
from tests.processes import free_port
from tests.smtp import ServerCertificate, SmtpServer, server_certificate

ADDRESS = "127.0.0.71"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> ServerCertificate:
    return server_certificate(tmp_path_factory.mktemp("smtp-tls"), ADDRESS)


@pytest.fixture()
def settings(app: Flask, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Point the app's mail at a server; returns a function taking the settings."""

    def use(server: SmtpServer, **extra: Any) -> None:
        values = {"SMTP_HOST": server.host, "SMTP_PORT": server.port,
                  "SMTP_SECURITY": "none", "SMTP_USERNAME": "", "SMTP_PASSWORD": "",
                  "SMTP_CA_BUNDLE": "", "SMTP_TIMEOUT": 5.0,
                  "MAIL_FROM": "Control Center <rpcc@example.test>", **extra}
        for key, value in values.items():
            monkeypatch.setitem(app.config, key, value)

    return use


@pytest.fixture()
def plain_server() -> Iterator[SmtpServer]:
    server = SmtpServer(ADDRESS)
    yield server
    server.stop()


def test_a_message_reaches_the_server_with_its_headers(db: Any, settings: Any,
                                                        plain_server: SmtpServer) -> None:
    settings(plain_server)
    assert mail.enabled()
    mail.send("kim@example.test", "Hello", "A line.\nAnother line.\n")
    received = plain_server.wait_for("kim@example.test")
    assert received.message["From"] == "Control Center <rpcc@example.test>"
    assert received.message["Subject"] == "Hello"
    assert received.message["Auto-Submitted"] == "auto-generated"
    assert received.message["Message-ID"].endswith("@example.test>")
    assert received.message["Date"]
    assert received.text == "A line.\nAnother line.\n"


def test_starttls_with_a_sign_in_and_a_private_ca(db: Any, settings: Any,
                                                   certificate: ServerCertificate) -> None:
    server = SmtpServer(ADDRESS, tls=certificate, credentials=("mailer", "s3cret-pass"))
    try:
        settings(server, SMTP_SECURITY="starttls", SMTP_USERNAME="mailer",
                 SMTP_PASSWORD="s3cret-pass", SMTP_CA_BUNDLE=certificate.ca_bundle)
        mail.send("kim@example.test", "Over TLS", "body\n")
        assert server.wait_for("kim@example.test").message["Subject"] == "Over TLS"

        settings(server, SMTP_SECURITY="starttls", SMTP_USERNAME="mailer",
                 SMTP_PASSWORD="wrong", SMTP_CA_BUNDLE=certificate.ca_bundle)
        with pytest.raises(MailFailed, match="refused this server's sign-in"):
            mail.send("kim@example.test", "Nope", "body\n")

        # Without the private root the server's certificate is not trusted.
        settings(server, SMTP_SECURITY="starttls", SMTP_USERNAME="mailer",
                 SMTP_PASSWORD="s3cret-pass")
        with pytest.raises(MailFailed, match="secure connection to the mail server failed"):
            mail.send("kim@example.test", "Nope", "body\n")
        assert len(server.to("kim@example.test")) == 1
    finally:
        server.stop()


def test_implicit_tls(db: Any, settings: Any, certificate: ServerCertificate) -> None:
    server = SmtpServer(ADDRESS, tls=certificate, implicit=True)
    try:
        settings(server, SMTP_SECURITY="tls", SMTP_CA_BUNDLE=certificate.ca_bundle)
        mail.send("kim@example.test", "SMTPS", "body\n")
        assert server.wait_for("kim@example.test").message["Subject"] == "SMTPS"
    finally:
        server.stop()


def test_starttls_asked_of_a_server_without_it_is_refused(db: Any, settings: Any,
                                                          plain_server: SmtpServer) -> None:
    settings(plain_server, SMTP_SECURITY="starttls")
    with pytest.raises(MailFailed, match="does not offer what the settings ask"):
        mail.send("kim@example.test", "Nope", "body\n")
    assert plain_server.received == []


def test_an_unreachable_or_silent_server_is_a_reason_not_a_crash(
        db: Any, settings: Any, plain_server: SmtpServer) -> None:
    settings(plain_server, SMTP_PORT=free_port(ADDRESS))  # nothing listens there
    with pytest.raises(MailFailed, match="cannot be reached") as refused:
        mail.send("kim@example.test", "Nope", "body\n")
    assert ADDRESS not in refused.value.message
    assert "Nothing changed" in refused.value.message

    # A server that accepts the connection and never greets.
    with socket.socket() as silent:
        silent.bind((ADDRESS, 0))
        silent.listen()
        settings(plain_server, SMTP_PORT=silent.getsockname()[1], SMTP_TIMEOUT=0.5)
        with pytest.raises(MailFailed, match="did not answer in time"):
            mail.send("kim@example.test", "Nope", "body\n")


def test_incomplete_settings_are_said_and_mail_off_is_off(
        app: Flask, db: Any, settings: Any, plain_server: SmtpServer,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings(plain_server, MAIL_FROM="")
    with pytest.raises(MailFailed, match="settings of this server are incomplete"):
        mail.send("kim@example.test", "Nope", "body\n")
    settings(plain_server, SMTP_SECURITY="sometimes")
    with pytest.raises(MailFailed, match="settings of this server are incomplete"):
        mail.send("kim@example.test", "Nope", "body\n")
    settings(plain_server, SMTP_SECURITY="tls", SMTP_CA_BUNDLE=str(tmp_path / "missing.pem"))
    with pytest.raises(MailFailed, match="settings of this server are incomplete"):
        mail.send("kim@example.test", "Nope", "body\n")
    monkeypatch.setitem(app.config, "SMTP_HOST", "")
    assert not mail.enabled()
    with pytest.raises(MailFailed, match="not set up"):
        mail.send("kim@example.test", "Nope", "body\n")
    assert plain_server.received == []
