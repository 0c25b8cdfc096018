"""/api/v1/users (administrators): write-only passwords, the generated one shown once."""

from __future__ import annotations

import pytest

from app.services import users
from tests import factories
from tests.conftest import api_headers

USER_FIELDS = {"id", "username", "email", "role", "max_sites", "is_active", "last_login",
               "created_at", "two_factor"}


@pytest.fixture()
def admin_h(admin):
    return api_headers(admin)


def test_create_with_password_never_returns_it(client, admin_h):
    response = client.post("/api/v1/users", headers=admin_h, json={
        "username": "dave", "email": "dave@example.com", "password": factories.PASSWORD,
        "max_sites": 3})
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert set(body) == USER_FIELDS
    assert (body["role"], body["max_sites"], body["is_active"]) == ("client", 3, True)
    assert factories.PASSWORD not in response.get_data(as_text=True)


def test_create_without_password_returns_the_generated_one_once(client, admin_h):
    response = client.post("/api/v1/users", headers=admin_h, json={
        "username": "erin", "email": "erin@example.com", "role": "admin"})
    body = response.get_json()
    assert response.status_code == 201 and set(body) == USER_FIELDS | {"password"}
    token = client.post("/api/v1/tokens", json={"username": "erin", "password": body["password"]})
    assert token.status_code == 201
    again = client.get(f"/api/v1/users/{body['id']}", headers=admin_h).get_json()
    assert set(again) == USER_FIELDS


def test_list_filters_by_query_and_role_and_paginates(client, admin, alice, bob, admin_h):
    body = client.get("/api/v1/users?per_page=2&page=2", headers=admin_h).get_json()
    assert (body["page"], body["per_page"], body["total"]) == (2, 2, 3)
    assert [u["username"] for u in body["items"]] == ["bob"]
    clients = client.get("/api/v1/users?role=client", headers=admin_h).get_json()
    assert [u["username"] for u in clients["items"]] == ["alice", "bob"]
    found = client.get("/api/v1/users?q=ALI", headers=admin_h).get_json()
    assert [u["username"] for u in found["items"]] == ["alice"]


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_put_and_patch_keep_unsent_fields(client, alice, admin_h, method):
    response = client.open(f"/api/v1/users/{alice.id}", method=method, headers=admin_h,
                           json={"max_sites": 20})
    body = response.get_json()
    assert response.status_code == 200
    assert (body["max_sites"], body["email"], body["role"]) == (20, "alice@example.com", "client")


def test_password_change_via_api_works_and_is_not_echoed(client, alice, admin_h):
    response = client.patch(f"/api/v1/users/{alice.id}", headers=admin_h,
                            json={"password": "a-brand-new-passphrase-7"})
    assert response.status_code == 200 and "password" not in response.get_json()
    assert users.authenticate("alice", "a-brand-new-passphrase-7") is not None


@pytest.mark.parametrize("payload,field", [
    ({"email": "not-an-email"}, "email"),
    ({"username": "A B"}, "username"),
    ({"role": "root"}, "role"),
    ({"max_sites": "5"}, "max_sites"),
    ({"max_sites": -1}, "max_sites"),
    ({"is_active": "false"}, "is_active"),
    ({"password": "short"}, "password"),
    ({"id": 9}, "id"),
    ({"last_login": None}, "last_login"),
])
def test_bad_user_values_are_422_naming_the_field(client, alice, admin_h, payload, field):
    response = client.patch(f"/api/v1/users/{alice.id}", headers=admin_h, json=payload)
    assert response.status_code == 422
    assert field in response.get_json()["error"]["fields"]


def test_taken_username_is_422(client, alice, admin_h):
    response = client.post("/api/v1/users", headers=admin_h,
                           json={"username": "alice", "email": "other@example.com"})
    assert response.status_code == 422
    assert "username" in response.get_json()["error"]["fields"]


def test_delete_user_is_204(client, bob, admin_h):
    assert client.delete(f"/api/v1/users/{bob.id}", headers=admin_h).status_code == 204
    assert client.get(f"/api/v1/users/{bob.id}", headers=admin_h).status_code == 404


def test_deleting_a_user_who_owns_sites_is_409(client, alice, admin_h):
    factories.make_site(alice, "owned.example.com")
    response = client.delete(f"/api/v1/users/{alice.id}", headers=admin_h)
    assert response.status_code == 409
    assert "owned.example.com" in response.get_json()["error"]["message"]


def test_admin_cannot_delete_or_demote_self(client, admin, admin_h):
    assert client.delete(f"/api/v1/users/{admin.id}", headers=admin_h).status_code == 403
    response = client.patch(f"/api/v1/users/{admin.id}", headers=admin_h, json={"role": "client"})
    assert response.status_code == 403


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
def test_client_gets_403_on_every_user_method(client, alice, bob, method):
    response = client.open(f"/api/v1/users/{bob.id}", method=method,
                           headers=api_headers(alice), json={"max_sites": 99})
    assert response.status_code == 403
    assert users.find_by_username("bob").max_sites != 99
