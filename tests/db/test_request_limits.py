"""Bad input at the edges answers 4xx in the API's error format or the error page,
never 500: overlong ids and pages, deep JSON, oversized bodies, bcrypt's limit."""

from __future__ import annotations

import pytest

from tests import factories
from tests.conftest import api_headers, login


@pytest.mark.parametrize("path", ["/api/v1/sites/99999999999999999999",
                                  "/api/v1/users/18446744073709551616",
                                  "/api/v1/deployments/9223372036854775808"])
def test_ids_beyond_the_database_range_are_not_found(client, admin, path):
    response = client.get(path, headers=api_headers(admin))
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(("kind", "field"), [("rollback", "version"), ("site", "owner_id"),
                                             ("new_site", "owner_id")])
def test_ids_beyond_the_database_range_in_a_body_are_a_field_error(client, admin, alice,
                                                                   kind, field):
    node = factories.make_node("edge-big")
    site = factories.make_site(alice, "big.example.com")
    method, path, body = {
        "rollback": ("POST", f"/api/v1/nodes/{node.id}/rollback", {}),
        "site": ("PATCH", f"/api/v1/sites/{site.id}", {}),
        "new_site": ("POST", "/api/v1/sites", {
            "domain": "new.example.com", "backends": [{"host": "127.0.0.1", "port": 80}]}),
    }[kind]
    response = client.open(path, method=method, headers=api_headers(admin),
                           json={**body, field: 2**64})
    assert response.status_code == 422, response.get_data(as_text=True)
    assert field in response.get_json()["error"]["fields"]


@pytest.mark.parametrize("path", ["/admin/sites?page=99999999999999999999",
                                  "/admin/nodes?page=1000001", "/admin/users?page=5000000"])
def test_absurd_page_numbers_are_a_field_error(client, admin, path):
    login(client, admin)
    assert client.get(path).status_code == 422
    assert client.get("/api/v1/sites?page=1000001",
                      headers=api_headers(admin)).get_json()["error"]["fields"] == {
        "page": "must be at most 1000000"}


def test_deeply_nested_json_is_refused_before_parsing(client, admin):
    body = "[" * 100_000 + "]" * 100_000
    response = client.post("/api/v1/sites", data=body, headers={
        **api_headers(admin), "Content-Type": "application/json"})
    assert response.status_code == 400
    assert "nested deeper" in response.get_json()["error"]["message"]


def test_bodies_over_the_limit_answer_413(app, client, admin):
    big = b"x" * (app.config["MAX_CONTENT_LENGTH"] + 1)
    response = client.post("/api/v1/sites", data=big, headers={
        **api_headers(admin), "Content-Type": "application/json"})
    assert response.status_code == 413 and response.get_json()["error"]["code"] == "too_large"
    login(client, admin)
    assert client.post("/admin/pools/new", data={"name": big.decode()}).status_code == 413


def test_a_basic_auth_password_over_bcrypts_72_bytes_is_a_field_error(client, alice):
    response = client.post("/api/v1/sites", headers=api_headers(alice), json={
        "domain": "auth.example.com", "backends": [{"host": "10.0.0.1", "port": 80}],
        "basic_auth": [{"username": "ops", "password": "é" * 37}]})
    assert response.status_code == 422
    assert response.get_json()["error"]["fields"] == {
        "basic_auth.0.password": "must be at most 72 bytes"}
