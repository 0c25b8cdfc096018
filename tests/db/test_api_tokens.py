"""/api/v1/tokens: password exchange (rate-limited like the login form), list, revoke."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.services import tokens
from tests import factories
from tests.conftest import api_headers


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_password_exchange_returns_a_working_token_once(client, alice):
    response = client.post("/api/v1/tokens", json={
        "username": "alice", "password": factories.PASSWORD, "name": "ci"})
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"token", "id", "name", "prefix", "expires", "read_only"}
    expires = datetime.fromisoformat(body["expires"])
    assert body["name"] == "ci" and body["read_only"] is False
    assert timedelta(days=89) < expires - datetime.now(UTC) <= timedelta(days=90)
    assert body["token"].startswith(body["prefix"])
    assert client.get("/api/v1/sites", headers=_bearer(body["token"])).status_code == 200
    listed = client.get("/api/v1/tokens", headers=_bearer(body["token"])).get_json()
    assert all("token" not in item for item in listed["items"])


def test_password_exchange_without_name_labels_the_token_api(client, alice):
    response = client.post("/api/v1/tokens", json={
        "username": "alice", "password": factories.PASSWORD})
    assert response.status_code == 201
    assert response.get_json()["name"] == "api"


@pytest.mark.parametrize("username,password", [
    ("alice", "wrong-password-123"), ("nobody", factories.PASSWORD)])
def test_wrong_credentials_are_401(client, alice, username, password):
    response = client.post("/api/v1/tokens", json={"username": username, "password": password})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.get_json()["error"]["code"] == "unauthorized"


def test_token_request_names_missing_and_unknown_fields(client, alice):
    response = client.post("/api/v1/tokens", json={"username": "alice", "scope": "all"})
    assert response.status_code == 422
    fields = response.get_json()["error"]["fields"]
    assert set(fields) == {"password", "scope"}


def test_invalid_token_name_is_422_naming_name(client, alice):
    response = client.post("/api/v1/tokens", json={
        "username": "alice", "password": factories.PASSWORD, "name": "bad\nname"})
    assert response.status_code == 422
    assert "name" in response.get_json()["error"]["fields"]


def test_malformed_json_is_400(client, alice):
    response = client.post("/api/v1/tokens", data="{not json",
                           content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "bad_request"


def test_list_shows_own_live_tokens_with_exact_fields(client, alice, bob):
    headers = api_headers(alice)
    tokens.create_token(alice, "second")
    revoked, _ = tokens.create_token(alice, "revoked")
    tokens.revoke_token(alice, revoked.id)
    tokens.create_token(bob, "bobs")
    body = client.get("/api/v1/tokens", headers=headers).get_json()
    assert body["total"] == 2 and body["page"] == 1
    assert {item["name"] for item in body["items"]} == {"test", "second"}
    assert set(body["items"][0]) == {"id", "name", "prefix", "created_at", "last_used", "expires",
                                     "read_only"}


def test_list_paginates(client, alice):
    headers = api_headers(alice)
    for n in range(4):
        tokens.create_token(alice, f"t{n}")
    body = client.get("/api/v1/tokens?page=2&per_page=2", headers=headers).get_json()
    assert (body["page"], body["per_page"], body["total"], len(body["items"])) == (2, 2, 5, 2)


def test_revoke_own_token_is_204_and_the_token_stops_working(client, alice):
    row, token = tokens.create_token(alice, "doomed")
    response = client.delete(f"/api/v1/tokens/{row.id}", headers=api_headers(alice))
    assert response.status_code == 204 and response.data == b""
    assert client.get("/api/v1/sites", headers=_bearer(token)).status_code == 401


def test_revoking_another_users_token_is_404(client, alice, bob):
    row, token = tokens.create_token(bob, "bobs")
    response = client.delete(f"/api/v1/tokens/{row.id}", headers=api_headers(alice))
    assert response.status_code == 404
    assert client.get("/api/v1/sites", headers=_bearer(token)).status_code == 200


def test_a_read_only_token_reads_but_changes_nothing(client, alice):
    body = client.post("/api/v1/tokens", json={
        "username": "alice", "password": factories.PASSWORD, "name": "monitor",
        "read_only": True, "expires_in_days": 7}).get_json()
    headers = _bearer(body["token"])
    assert body["read_only"] is True
    assert client.get("/api/v1/sites", headers=headers).status_code == 200
    refused = client.post("/api/v1/sites", headers=headers, json={
        "domain": "ro.example.com", "backends": [{"host": "10.0.0.1", "port": 80}]})
    assert refused.status_code == 403
    assert refused.get_json()["error"]["message"] == "this token is read-only"
    assert client.delete(f"/api/v1/tokens/{body['id']}", headers=headers).status_code == 403


@pytest.mark.parametrize("days", [0, 3651, "ninety", True])
def test_a_token_lifetime_outside_1_to_3650_days_is_refused(client, alice, days):
    response = client.post("/api/v1/tokens", json={
        "username": "alice", "password": factories.PASSWORD, "expires_in_days": days})
    assert response.status_code == 422
    assert "expires_in_days" in response.get_json()["error"]["fields"]
