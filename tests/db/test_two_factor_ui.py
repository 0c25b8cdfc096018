"""Two-factor sign-in in the web UI: set-up on the profile, the second sign-in step
bound to the first, the administrators' requirement, an administrator's reset."""

from __future__ import annotations

import re
import time

import pyotp
from sqlalchemy import func, select

from app.models import AuditLog, UserSession
from app.services import settings, two_factor
from tests import factories
from tests.conftest import api_headers, login


def _enrol_in_browser(browser) -> tuple[pyotp.TOTP, list[str]]:
    """Set up through the profile as a person would: read the key off the page."""
    page = browser.get("/client/profile/two-factor")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'src="data:image/svg+xml' in html
    secret = re.search(r'id="totp-secret">([A-Z2-7 ]+)<', html).group(1).replace(" ", "")
    totp = pyotp.TOTP(secret)
    done = browser.post("/client/profile/two-factor",
                        data={"code": totp.at(time.time(), counter_offset=-1)})
    assert done.status_code == 200 and done.headers["Cache-Control"] == "no-store"
    codes = re.findall(r"<li>([a-z0-9]{4}(?:-[a-z0-9]{4}){3})</li>", done.get_data(as_text=True))
    assert len(codes) == 10
    return totp, codes


def _password_step(browser, user, next_path: str = ""):
    return browser.post("/auth/login" + (f"?next={next_path}" if next_path else ""),
                        data={"username": user.username, "password": factories.PASSWORD})


def _sessions(db, user) -> int:
    return db.session.scalar(select(func.count()).select_from(UserSession)
                             .where(UserSession.user_id == user.id))


def test_setting_up_from_the_profile_then_signing_in_with_a_code(app, db, alice):
    browser = app.test_client()
    login(browser, alice)
    assert "Set up two-factor sign-in" in browser.get("/client/profile").get_data(as_text=True)
    totp, _ = _enrol_in_browser(browser)
    assert "Manage two-factor sign-in" in browser.get("/client/profile").get_data(as_text=True)
    browser.post("/auth/logout")

    before = _sessions(db, alice)
    response = _password_step(browser, alice, "/client/tokens")
    assert response.status_code == 302 and response.location.endswith("/auth/two-factor")
    assert _sessions(db, alice) == before  # no session before the code
    # The password alone opens nothing, on any page.
    assert browser.get("/client/").status_code == 302
    assert browser.get("/client/profile/two-factor").status_code == 302
    response = browser.post("/auth/two-factor", data={"code": totp.now()})
    assert response.status_code == 302 and response.location.endswith("/client/tokens")
    assert _sessions(db, alice) == before + 1
    assert browser.get("/client/").status_code == 200


def test_a_wrong_code_and_a_replayed_code_are_refused_on_the_field(app, db, alice):
    browser = app.test_client()
    login(browser, alice)
    totp, _ = _enrol_in_browser(browser)
    browser.post("/auth/logout")
    _password_step(browser, alice)
    code = totp.now()
    wrong = next(c for c in ("000000", "111111", "222222")
                 if c not in {totp.at(time.time(), counter_offset=o) for o in (-1, 0, 1)})
    refused = browser.post("/auth/two-factor", data={"code": wrong})
    assert refused.status_code == 422
    assert "is not correct" in refused.get_data(as_text=True)
    assert browser.post("/auth/two-factor", data={"code": code}).status_code == 302
    browser.post("/auth/logout")
    _password_step(browser, alice)
    replayed = browser.post("/auth/two-factor", data={"code": code})
    assert replayed.status_code == 422
    assert "was already used" in replayed.get_data(as_text=True)


def test_a_recovery_code_signs_in_once(app, db, alice):
    browser = app.test_client()
    login(browser, alice)
    _, codes = _enrol_in_browser(browser)
    browser.post("/auth/logout")
    _password_step(browser, alice)
    assert browser.post("/auth/two-factor", data={"code": codes[0]}).status_code == 302
    browser.post("/auth/logout")
    _password_step(browser, alice)
    again = browser.post("/auth/two-factor", data={"code": codes[0]})
    assert again.status_code == 422 and "already used" in again.get_data(as_text=True)


def test_the_second_step_needs_the_first_in_this_browser(app, db, alice):
    browser = app.test_client()
    login(browser, alice)
    totp, _ = _enrol_in_browser(browser)
    browser.post("/auth/logout")
    stranger = app.test_client()
    response = stranger.post("/auth/two-factor", data={"code": totp.now()})
    assert response.status_code == 302 and response.location.endswith("/auth/login")
    # A ticket dies when the password changes between the two steps.
    _password_step(browser, alice)
    alice.password_hash = "changed elsewhere"
    db.session.commit()
    response = browser.post("/auth/two-factor", data={"code": totp.now()})
    assert response.status_code == 302 and response.location.endswith("/auth/login")


def test_an_account_without_two_factor_signs_in_with_the_password(app, db, bob):
    browser = app.test_client()
    response = _password_step(browser, bob)
    assert response.status_code == 302 and not response.location.endswith("/auth/two-factor")


def test_changing_two_factor_asks_for_the_password_or_a_code(app, db, alice):
    browser = app.test_client()
    login(browser, alice)
    totp, old = _enrol_in_browser(browser)
    refused = browser.post("/client/profile/two-factor/off", data={"off-proof": "guess"})
    assert refused.status_code == 422 and "neither your password" in refused.get_data(as_text=True)
    fresh = browser.post("/client/profile/two-factor/recovery-codes",
                         data={"codes-proof": factories.PASSWORD})
    assert fresh.status_code == 200 and fresh.headers["Cache-Control"] == "no-store"
    new = re.findall(r"<li>([a-z0-9-]{19})</li>", fresh.get_data(as_text=True))
    assert len(new) == 10 and not set(new) & set(old)
    off = browser.post("/client/profile/two-factor/off", data={"off-proof": totp.now()})
    assert off.status_code == 302
    assert not two_factor.is_enabled(alice)


def test_an_administrator_must_enrol_before_anything_else_when_required(app, db, admin):
    settings.update_security_settings(admin, {"require_admin_two_factor": True})
    headers = api_headers(admin)
    browser = app.test_client()
    response = _password_step(browser, admin, "/admin/nodes")
    assert response.status_code == 302
    for path in ("/admin/nodes", "/admin/", "/client/profile", "/client/tokens"):
        held = browser.get(path)
        assert held.status_code == 302 and held.location.endswith("/client/profile/two-factor")
    # The set-up page's own styles and scripts (the app's and Bootstrap's) are not held.
    page = browser.get("/client/profile/two-factor").get_data(as_text=True)
    assets = re.findall(r'(?:href|src)="(/(?:static|bootstrap)[^"]+)"', page)
    assert any(asset.startswith("/bootstrap/") for asset in assets)
    for asset in assets:
        assert browser.get(asset).status_code == 200, asset
    # Scripts with tokens are not held.
    assert app.test_client().get("/api/v1/nodes", headers=headers).status_code == 200
    _enrol_in_browser(browser)
    assert browser.get("/admin/nodes").status_code == 200


def test_the_requirement_is_set_on_the_settings_page(app, db, admin):
    browser = app.test_client()
    login(browser, admin)
    assert "Require two-factor sign-in for administrators" in browser.get(
        "/admin/settings").get_data(as_text=True)
    response = browser.post("/admin/settings/security", data={"require_admin_two_factor": "y"})
    assert response.status_code == 302
    assert settings.admin_two_factor_required()
    assert browser.get("/admin/settings").location.endswith("/client/profile/two-factor")


def test_an_administrator_resets_a_users_two_factor_from_the_user_list(app, db, admin, alice):
    browser = app.test_client()
    login(browser, alice)
    _enrol_in_browser(browser)
    desk = app.test_client()
    login(desk, admin)
    listing = desk.get("/admin/users").get_data(as_text=True)
    assert f"/admin/users/{alice.id}/reset-two-factor" in listing
    assert desk.post(f"/admin/users/{alice.id}/reset-two-factor").status_code == 302
    assert not two_factor.is_enabled(alice)
    assert db.session.scalar(select(AuditLog.action).order_by(AuditLog.id.desc())) \
        == "user.two_factor.reset"
    # Again: nothing to reset, said in words.
    again = desk.post(f"/admin/users/{alice.id}/reset-two-factor", follow_redirects=True)
    assert "does not use two-factor sign-in" in again.get_data(as_text=True)


def test_wrong_codes_count_in_the_sign_in_limits_without_locking_the_owner_out(
        limited, db, alice):
    totp = pyotp.TOTP(two_factor.begin_enrolment(alice).secret)
    two_factor.confirm_enrolment(alice, totp.at(time.time(), counter_offset=-1))
    # Someone who knows the password guesses codes from their address.
    attacker, there = limited.test_client(), {"REMOTE_ADDR": "10.0.0.1"}
    assert attacker.post("/auth/login", data={"username": "alice",
                                              "password": factories.PASSWORD},
                         environ_base=there).status_code == 302
    for guess in ("12345x", "12345y"):
        assert attacker.post("/auth/two-factor", data={"code": guess},
                             environ_base=there).status_code == 422
    # Locked there: even the right code is refused unread.
    blocked = attacker.post("/auth/two-factor", data={"code": totp.now()}, environ_base=there)
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 0
    # The owner, from an address without failures, signs in with both steps.
    owner, home = limited.test_client(), {"REMOTE_ADDR": "10.0.0.2"}
    assert owner.post("/auth/login", data={"username": "alice", "password": factories.PASSWORD},
                      environ_base=home).status_code == 302
    code = totp.at(time.time(), counter_offset=1)  # the last step is spent above
    assert owner.post("/auth/two-factor", data={"code": code},
                      environ_base=home).status_code == 302
    assert db.session.scalar(select(func.count()).select_from(AuditLog).where(
        AuditLog.action == "auth.sign_in_locked")) >= 1
