"""Changing one's e-mail address by a link mailed to it, against a real SMTP server on
loopback: the answer never tells whether another account uses the address; the
mailbox does (a warning without a link); links are signed, last 24 hours, work once
and only for their own account."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from itsdangerous import TimestampSigner
from sqlalchemy import select

from app.errors import Conflict, Forbidden, Gone, MailFailed, NotFound, ValidationError
from app.models import AuditLog, User
from app.services import email_change
from tests import factories
from tests.conftest import login, make_app
from tests.processes import free_port
from tests.smtp import Received, SmtpServer

ADDRESS = "127.0.0.72"
LINK = re.compile(r"http://rpcc\.test/confirm/(\S+)")
SENT = "We sent a link to {}; your address changes when you open it (within 24 hours)."


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer(ADDRESS)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def mail_on(app: Flask, smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> SmtpServer:
    settings = {"SMTP_HOST": smtp.host, "SMTP_PORT": smtp.port, "SMTP_SECURITY": "none",
                "MAIL_FROM": "rpcc@example.test", "PUBLIC_URL": "http://rpcc.test:8443"}
    for key, value in settings.items():
        monkeypatch.setitem(app.config, key, value)
    smtp.received.clear()
    return smtp


def link(token: str) -> str:
    return f"http://rpcc.test/confirm/{token}"


def token_in(received: Received) -> str:
    match = LINK.search(received.text)
    assert match, received.text
    return match.group(1)


def committed(db: Any, user: User) -> User:
    db.session.rollback()  # look at what was committed, not at the session's objects
    return db.session.get(User, user.id)


def actions(db: Any) -> list[str]:
    return list(db.session.scalars(select(AuditLog.action).order_by(AuditLog.id)))


# ----------------------------------------------------------------------------- service


def test_a_free_address_gets_a_link_that_changes_the_address(
        db: Any, alice: User, smtp: SmtpServer) -> None:
    assert email_change.request_change(alice, " New@Example.org ", link) == "New@example.org"
    assert committed(db, alice).email == "alice@example.com"  # nothing yet
    received = smtp.wait_for("New@example.org")
    assert received.message["Subject"].startswith("Confirm your new e-mail address")
    assert "within 24 hours" in received.text
    assert "alice" not in received.text  # the link's reader may be a stranger

    pending = email_change.read_link(alice, token_in(received))
    assert (pending.user.id, pending.new_email) == (alice.id, "New@example.org")
    email_change.confirm_change(alice, token_in(received))
    assert committed(db, alice).email == "New@example.org"
    notice = smtp.wait_for("alice@example.com")
    assert "now uses New@example.org" in notice.text
    assert actions(db)[-2:] == ["user.email_change_request", "user.email_change"]
    details = db.session.scalars(select(AuditLog.details).where(
        AuditLog.action == "user.email_change")).one()
    assert details == {"email": {"old": "alice@example.com", "new": "New@example.org"}}


def test_a_taken_address_gets_the_same_answer_a_warning_and_no_change(
        db: Any, alice: User, bob: User, smtp: SmtpServer) -> None:
    assert email_change.request_change(alice, "BOB@example.com", link) == "BOB@example.com"
    warning = smtp.wait_for("BOB@example.com")
    assert "already uses it, so nothing changed" in warning.text
    assert "http" not in warning.text and "alice" not in warning.text
    assert committed(db, alice).email == "alice@example.com"
    assert committed(db, bob).email == "bob@example.com"


def test_the_own_address_and_a_non_address_are_field_errors_and_send_nothing(
        db: Any, alice: User, smtp: SmtpServer) -> None:
    for value, message in (("ALICE@example.com", "is already your address"),
                           ("not an address", "")):
        with pytest.raises(ValidationError) as refused:
            email_change.request_change(alice, value, link)
        assert message in refused.value.fields["email"]
    assert smtp.received == []


def test_a_tampered_or_expired_link_is_refused(db: Any, alice: User, smtp: SmtpServer,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    email_change.request_change(alice, "new@example.org", link)
    token = token_in(smtp.wait_for("new@example.org"))
    for bad in (token[:-2] + ("AA" if not token.endswith("AA") else "BB"), token[:20], "x"):
        with pytest.raises(NotFound, match="not valid"):
            email_change.confirm_change(alice, bad)
    later = int(time.time()) + 24 * 3600 + 5
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: later)
    with pytest.raises(Gone, match="expired: links last 24 hours"):
        email_change.confirm_change(alice, token)
    assert committed(db, alice).email == "alice@example.com"


def test_a_link_is_void_once_the_address_changed_and_works_once(
        db: Any, alice: User, smtp: SmtpServer) -> None:
    email_change.request_change(alice, "first@example.org", link)
    email_change.request_change(alice, "second@example.org", link)
    first = token_in(smtp.wait_for("first@example.org"))
    second = token_in(smtp.wait_for("second@example.org"))
    email_change.confirm_change(alice, second)
    for used in (first, second):
        with pytest.raises(Conflict, match="can no longer be used"):
            email_change.confirm_change(committed(db, alice), used)
    assert committed(db, alice).email == "second@example.org"
    assert actions(db)[-1] == "user.email_change_refused"


def test_an_address_taken_meanwhile_says_only_that_the_link_is_spent(
        db: Any, alice: User, smtp: SmtpServer) -> None:
    email_change.request_change(alice, "wanted@example.org", link)
    token = token_in(smtp.wait_for("wanted@example.org"))
    factories.make_user("client", "carol", email="wanted@example.org")
    with pytest.raises(Conflict) as refused:
        email_change.confirm_change(alice, token)
    assert refused.value.message == email_change.NO_LONGER_USABLE
    assert committed(db, alice).email == "alice@example.com"


def test_a_link_is_for_its_own_account_only(db: Any, alice: User, bob: User,
                                           smtp: SmtpServer) -> None:
    email_change.request_change(alice, "new@example.org", link)
    token = token_in(smtp.wait_for("new@example.org"))
    with pytest.raises(Forbidden, match="sent for another account"):
        email_change.confirm_change(bob, token)
    assert committed(db, bob).email == "bob@example.com"


def test_a_mail_server_that_is_down_changes_nothing_and_says_so(
        app: Flask, db: Any, alice: User, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(app.config, "SMTP_PORT", free_port(ADDRESS))
    with pytest.raises(MailFailed, match="cannot be reached"):
        email_change.request_change(alice, "new@example.org", link)
    assert "user.email_change_request" not in actions(db)


# ----------------------------------------------------------------------------- web


def text(response: Any) -> str:
    return html.unescape(response.get_data(as_text=True))


def web_link(received: Received) -> str:
    """The link's path on the app (the mail names PUBLIC_URL, not the request's host)."""
    match = re.search(r"http://rpcc\.test:8443(/client/profile/email/confirm/\S+)",
                      received.text)
    assert match, received.text
    return match.group(1)


def test_free_and_taken_addresses_get_the_same_answer_on_the_profile(
        db: Any, alice: User, bob: User, alice_client: FlaskClient, smtp: SmtpServer) -> None:
    answers = []
    for address in ("free@example.org", bob.email):
        response = alice_client.post("/client/profile/email", data={"email": address})
        assert response.status_code == 302
        answers.append(text(alice_client.get(response.headers["Location"])))
    assert SENT.format("free@example.org") in answers[0]
    assert SENT.format(bob.email) in answers[1]
    assert answers[0].replace("free@example.org", "X") == answers[1].replace(bob.email, "X")
    assert "/client/profile/email/confirm/" in smtp.wait_for("free@example.org").text
    assert "http" not in smtp.wait_for(bob.email).text
    assert committed(db, alice).email == "alice@example.com"


def test_the_link_asks_first_then_changes_the_address(
        db: Any, alice: User, alice_client: FlaskClient, smtp: SmtpServer) -> None:
    alice_client.post("/client/profile/email", data={"email": "new@example.org"})
    path = web_link(smtp.wait_for("new@example.org"))
    page = alice_client.get(path)
    assert page.status_code == 200
    assert "Confirm the new address" in text(page) and "new@example.org" in text(page)
    assert committed(db, alice).email == "alice@example.com"
    response = alice_client.post(path, follow_redirects=True)
    assert "Your e-mail address is now new@example.org." in text(response)
    assert committed(db, alice).email == "new@example.org"
    again = alice_client.get(path)
    assert again.status_code == 409 and email_change.NO_LONGER_USABLE in text(again)


def test_the_link_signed_out_goes_through_sign_in_and_back(
        app: Flask, db: Any, alice: User, alice_client: FlaskClient, smtp: SmtpServer) -> None:
    alice_client.post("/client/profile/email", data={"email": "new@example.org"})
    path = web_link(smtp.wait_for("new@example.org"))
    browser = app.test_client()
    response = browser.get(path)
    assert response.status_code == 302 and "/auth/login" in response.headers["Location"]
    signed_in = browser.post(response.headers["Location"], data={
        "username": "alice", "password": factories.PASSWORD})
    assert signed_in.headers["Location"].endswith(path)
    assert "Confirm the new address" in text(browser.get(path))


def test_refused_links_have_their_own_page(
        db: Any, alice: User, bob: User, alice_client: FlaskClient, smtp: SmtpServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    alice_client.post("/client/profile/email", data={"email": "new@example.org"})
    path = web_link(smtp.wait_for("new@example.org"))
    tampered = alice_client.get(path[:-3] + "xyz")
    assert tampered.status_code == 404 and "This link is not valid" in text(tampered)
    bob_client = alice_client.application.test_client()
    login(bob_client, bob)
    assert bob_client.post(path).status_code == 403
    later = int(time.time()) + 24 * 3600 + 5
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: later)
    expired = alice_client.post(path)
    assert expired.status_code == 410 and "This link has expired" in text(expired)
    assert "Back to your profile" in text(expired)
    assert committed(db, alice).email == "alice@example.com"


def test_a_mail_failure_is_said_on_the_profile_not_a_server_error(
        app: Flask, db: Any, alice: User, alice_client: FlaskClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(app.config, "SMTP_PORT", free_port(ADDRESS))
    response = alice_client.post("/client/profile/email", data={"email": "new@example.org"})
    assert response.status_code == 503
    assert "The mail could not be sent: the mail server cannot be reached" in text(response)
    assert ADDRESS not in text(response)
    assert committed(db, alice).email == "alice@example.com"


def test_address_change_requests_are_limited_per_user(
        db: Any, alice: User, smtp: SmtpServer) -> None:
    limited = make_app(RATELIMIT_ENABLED=True, EMAIL_CHANGE_LIMIT="2 per hour",
                       SMTP_HOST=smtp.host, SMTP_PORT=smtp.port, SMTP_SECURITY="none",
                       MAIL_FROM="rpcc@example.test")
    client = limited.test_client()
    with limited.app_context():
        login(client, alice)
        answers = [client.post("/client/profile/email", data={"email": f"n{i}@example.org"})
                   for i in range(3)]
    assert [a.status_code for a in answers] == [302, 302, 429]
    assert "Too many address change requests" in text(answers[2])
    assert smtp.to("n2@example.org") == []


def test_an_administrator_changes_their_own_address_the_same_way(
        db: Any, admin: User, alice: User, admin_client: FlaskClient, smtp: SmtpServer) -> None:
    response = admin_client.post("/client/profile/email", data={"email": alice.email},
                                 follow_redirects=True)
    assert SENT.format(alice.email) in text(response)
    assert "http" not in smtp.wait_for(alice.email).text
    admin_client.post("/client/profile/email", data={"email": "boss@example.org"})
    path = web_link(smtp.wait_for("boss@example.org"))
    admin_client.post(path)
    assert committed(db, admin).email == "boss@example.org"
