"""Two-factor sign-in in the API: the administrators' requirement as a setting, the
state on each user, an administrator's reset; tokens are not held by the requirement."""

from __future__ import annotations

import time

import pyotp

from app.services import settings, two_factor
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
