"""Two-factor sign-in in the API: the administrators' requirement as a setting, the
state on each user, an administrator's reset; tokens are not held by the requirement."""

from __future__ import annotations

import time

import pyotp

from app.services import settings, two_factor
from tests import factories
from tests.conftest import api_headers


def _enrol(user) -> pyotp.TOTP:
    totp = pyotp.TOTP(two_factor.begin_enrolment(user).secret)
    two_factor.confirm_enrolment(user, totp.at(time.time(), counter_offset=-1))
    return totp


def test_the_requirement_is_read_and_changed_by_administrators_only(client, admin, alice):
    headers = api_headers(admin)
    assert client.get("/api/v1/settings/security", headers=headers).get_json() == {
        "require_admin_two_factor": False}
    response = client.put("/api/v1/settings/security", headers=headers,
                          json={"require_admin_two_factor": True})
    assert response.status_code == 200 and response.get_json()["require_admin_two_factor"]
    assert settings.admin_two_factor_required()
    # The token that changed it keeps working: the requirement is about signing in.
    assert client.get("/api/v1/users", headers=headers).status_code == 200
    refused = client.put("/api/v1/settings/security", headers=headers,
                         json={"require_admin_two_factor": "yes"})
    assert refused.status_code == 422
    assert "require_admin_two_factor" in refused.get_json()["error"]["fields"]
    assert client.get("/api/v1/settings/security",
                      headers=api_headers(alice)).status_code == 403


def test_users_say_whether_they_use_two_factor_and_an_administrator_resets_it(
        client, admin, alice):
    headers = api_headers(admin)
    _enrol(alice)
    body = client.get(f"/api/v1/users/{alice.id}", headers=headers).get_json()
    assert body["two_factor"] is True
    assert client.delete(f"/api/v1/users/{alice.id}/two-factor",
                         headers=headers).status_code == 204
    assert client.get(f"/api/v1/users/{alice.id}", headers=headers).get_json()[
        "two_factor"] is False
    again = client.delete(f"/api/v1/users/{alice.id}/two-factor", headers=headers)
    assert again.status_code == 409
    assert client.delete(f"/api/v1/users/{admin.id}/two-factor",
                         headers=api_headers(alice)).status_code == 403


def _token_request(client, user, **extra):
    return client.post("/api/v1/tokens", json={"username": user.username,
                                               "password": factories.PASSWORD, **extra})


def test_a_token_for_an_account_with_two_factor_needs_its_code_once(client, db, alice):
    totp = _enrol(alice)
    missing = _token_request(client, alice)
    assert missing.status_code == 401
    assert missing.get_json()["error"]["fields"] == {"code": "is required"}
    wrong = _token_request(client, alice, code="12345x")
    assert wrong.status_code == 401 and "6-digit code" in wrong.get_json()["error"]["fields"][
        "code"]
    code = totp.now()
    created = _token_request(client, alice, code=code)
    assert created.status_code == 201
    assert client.get("/api/v1/sites", headers={
        "Authorization": f"Bearer {created.get_json()['token']}"}).status_code == 200
    replayed = _token_request(client, alice, code=code)
    assert replayed.status_code == 401
    assert "already used" in replayed.get_json()["error"]["fields"]["code"]


def test_a_recovery_code_makes_a_token_too_and_is_spent(client, db, alice):
    _enrol(alice)
    code = two_factor.regenerate_recovery_codes(alice, factories.PASSWORD)[0]
    assert _token_request(client, alice, code=code).status_code == 201
    assert _token_request(client, alice, code=code).status_code == 401


def test_an_administrator_held_at_set_up_makes_no_token_with_a_password(client, db, admin):
    headers = api_headers(admin)  # made before the requirement: it keeps working
    settings.update_security_settings(admin, {"require_admin_two_factor": True})
    refused = _token_request(client, admin)
    assert refused.status_code == 403
    assert "set up two-factor sign-in" in refused.get_json()["error"]["message"]
    assert client.get("/api/v1/nodes", headers=headers).status_code == 200
    totp = _enrol(admin)
    assert _token_request(client, admin, code=totp.now()).status_code == 201


def test_guessing_codes_through_the_token_api_is_limited(limited, alice):
    """The right password in every request does not wipe the wrong codes out."""
    totp = _enrol(alice)
    attacker = limited.test_client()
    answers = [_token_request(attacker, alice, code="12345x").status_code for _ in range(3)]
    assert answers == [401, 401, 429]
    assert _token_request(attacker, alice, code=totp.now()).status_code == 429
    # The owner's own address is not locked.
    owner = limited.test_client()
    answer = owner.post("/api/v1/tokens", environ_base={"REMOTE_ADDR": "10.9.9.9"}, json={
        "username": alice.username, "password": factories.PASSWORD, "code": totp.now()})
    assert answer.status_code == 201


def test_signing_in_again_does_not_wipe_out_wrong_codes(limited, db, alice):
    totp = _enrol(alice)
    browser = limited.test_client()
    statuses = []
    for guess in ("12345x", "12345y", "12345z"):
        statuses.append(browser.post("/auth/login", data={
            "username": alice.username, "password": factories.PASSWORD}).status_code)
        statuses.append(browser.post("/auth/two-factor", data={"code": guess}).status_code)
    assert statuses[:4] == [302, 422, 302, 422]
    assert 429 in statuses[4:]
    assert browser.post("/auth/two-factor", data={"code": totp.now()}).status_code == 429
