"""Sessions live on the server: signing out ends the session even where a copy of its
cookie survives; a new password or a deactivation ends every session and token."""

from __future__ import annotations

from sqlalchemy import select

from app.extensions import db as _db
from app.models import UserSession
from app.services import users
from tests import factories
from tests.conftest import api_headers, login


def test_a_cookie_saved_before_signing_out_opens_nothing(app, alice):
    browser = app.test_client()
    login(browser, alice)
    saved = browser.get_cookie("session")
    assert saved is not None and browser.get("/client/").status_code == 200
    browser.post("/auth/logout")
    thief = app.test_client()
    thief.set_cookie("session", saved.value, domain=saved.domain)
    response = thief.get("/client/")
    assert response.status_code == 302 and "/auth/login" in response.location


def test_a_remember_me_cookie_dies_with_its_session(app, alice):
    browser = app.test_client()
    browser.post("/auth/login", data={"username": alice.username,
                                      "password": factories.PASSWORD, "remember": "y"})
    remembered = browser.get_cookie("remember_token")
    assert remembered is not None
    browser.post("/auth/logout")
    thief = app.test_client()
    thief.set_cookie("remember_token", remembered.value, domain=remembered.domain)
    assert thief.get("/client/").status_code == 302


def test_a_new_password_ends_every_session_and_token(app, alice):
    first, second = app.test_client(), app.test_client()
    login(first, alice)
    login(second, alice)
    headers = api_headers(alice)
    assert app.test_client().get("/api/v1/sites", headers=headers).status_code == 200
    response = first.post("/client/profile/password", data={
        "current_password": factories.PASSWORD, "new_password": "another long password 7",
        "confirm_password": "another long password 7"})
    assert response.status_code == 302
    assert second.get("/client/").status_code == 302
    assert app.test_client().get("/api/v1/sites", headers=headers).status_code == 401


def test_deactivation_ends_sessions_and_tokens(app, admin, alice):
    browser = app.test_client()
    login(browser, alice)
    headers = api_headers(alice)
    users.set_active(admin, alice.id, False)
    assert browser.get("/client/").status_code == 302
    assert app.test_client().get("/api/v1/sites", headers=headers).status_code == 401


def test_a_user_sees_and_ends_their_other_sessions(app, alice, bob):
    laptop, phone = app.test_client(), app.test_client()
    login(laptop, alice)
    login(phone, alice)
    page = laptop.get("/client/profile").get_data(as_text=True)
    assert page.count("/end\"") == 1 and "this browser" in page  # the other one only
    rows = list(_db.session.scalars(select(UserSession).where(UserSession.user_id == alice.id)))
    other = max(rows, key=lambda row: row.id)
    assert laptop.post(f"/client/profile/sessions/{other.id}/end").status_code == 302
    assert phone.get("/client/").status_code == 302
    assert laptop.get("/client/").status_code == 200
    bobs = app.test_client()
    login(bobs, bob)
    assert bobs.post(f"/client/profile/sessions/{rows[0].id}/end").status_code == 404
