"""Bearer-token authentication of /api/v1: 401 with a challenge, never a cookie."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.extensions import db as _db
from app.models.base import utcnow
from app.services import tokens, users
from tests.conftest import api_headers, login, make_app

PROTECTED = ["/api/v1/sites", "/api/v1/tokens", "/api/v1/pools", "/api/v1/nodes",
             "/api/v1/users", "/api/v1/audit", "/api/v1/sites/1", "/api/v1/nodes/1",
             "/api/v1/users/1"]


def _assert_unauthorized(response) -> None:
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.get_json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("url", PROTECTED)
def test_request_without_token_is_401_with_bearer_challenge(client, url):
    _assert_unauthorized(client.get(url))


@pytest.mark.parametrize("header", [
    "Bearer rpcc_not-a-real-token", "Bearer ", "Bearer", "Basic YWxpY2U6cGFzcw==", "rpcc_x",
])
def test_malformed_or_unknown_token_is_401(client, alice, header):
    _assert_unauthorized(client.get("/api/v1/sites", headers={"Authorization": header}))


def test_valid_token_is_accepted_with_any_case_of_scheme(client, alice):
    _, token = tokens.create_token(alice, "t")
    response = client.get("/api/v1/sites", headers={"Authorization": f"bearer {token}"})
    assert response.status_code == 200


def test_revoked_token_is_401(client, alice):
    row, token = tokens.create_token(alice, "t")
    tokens.revoke_token(alice, row.id)
    _assert_unauthorized(client.get("/api/v1/sites",
                                    headers={"Authorization": f"Bearer {token}"}))


def test_expired_token_is_401(client, alice):
    row, token = tokens.create_token(alice, "t", expires_in_days=1)
    row.expires = utcnow() - timedelta(seconds=1)
    _db.session.commit()
    _assert_unauthorized(client.get("/api/v1/sites",
                                    headers={"Authorization": f"Bearer {token}"}))


def test_token_of_deactivated_user_is_401(client, admin, alice):
    headers = api_headers(alice)
    users.set_active(admin, alice.id, False)
    _assert_unauthorized(client.get("/api/v1/sites", headers=headers))


def test_session_cookie_is_not_accepted(client, alice):
    login(client, alice)
    _assert_unauthorized(client.get("/api/v1/sites"))
    _assert_unauthorized(client.post("/api/v1/sites", json={"domain": "x.example.com"}))


def test_writes_need_no_csrf_token_because_the_api_ignores_cookies(app, db, alice):
    csrf_app = make_app(WTF_CSRF_ENABLED=True)
    http = csrf_app.test_client()
    response = http.post("/api/v1/sites", headers=api_headers(alice), json={
        "domain": "csrf.example.com", "backends": [{"host": "127.0.0.1", "port": 80}]})
    assert response.status_code == 201, response.get_json()


def test_client_gets_403_on_admin_resources(client, alice):
    headers = api_headers(alice)
    for method, url in [("GET", "/api/v1/nodes"), ("POST", "/api/v1/nodes"),
                        ("GET", "/api/v1/users"), ("POST", "/api/v1/users"),
                        ("GET", "/api/v1/audit"), ("POST", "/api/v1/pools")]:
        response = client.open(url, method=method, headers=headers, json={})
        assert response.status_code == 403, (method, url)
        assert response.get_json()["error"]["code"] == "forbidden"


def test_unknown_api_path_answers_json_404(client, alice):
    response = client.get("/api/v1/nothing-here", headers=api_headers(alice))
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"

