"""/api/v1/pools: readable by every account, managed by administrators."""

from __future__ import annotations

import pytest

from app.services import nodes
from tests import factories
from tests.conftest import api_headers


@pytest.fixture()
def admin_h(admin):
    return api_headers(admin)


def test_any_account_lists_pools_with_pagination(client, admin, alice):
    nodes.create_pool(admin, "eu", "Europe")
    nodes.create_pool(admin, "us")
    body = client.get("/api/v1/pools?per_page=2", headers=api_headers(alice)).get_json()
    assert (body["page"], body["per_page"], body["total"]) == (1, 2, 3)
    assert body["items"] == [
        {"id": body["items"][0]["id"], "name": "default", "description": "Default pool"},
        {"id": body["items"][1]["id"], "name": "eu", "description": "Europe"},
    ]


def test_admin_creates_renames_and_deletes_a_pool(client, admin_h):
    created = client.post("/api/v1/pools", headers=admin_h, json={"name": "asia"})
    assert created.status_code == 201
    pool = created.get_json()
    assert pool["name"] == "asia" and pool["description"] == ""
    renamed = client.put(f"/api/v1/pools/{pool['id']}", headers=admin_h,
                         json={"name": "apac", "description": "Asia-Pacific"})
    assert renamed.status_code == 200
    assert renamed.get_json() == {"id": pool["id"], "name": "apac",
                                  "description": "Asia-Pacific"}
    assert client.delete(f"/api/v1/pools/{pool['id']}", headers=admin_h).status_code == 204
    assert client.delete(f"/api/v1/pools/{pool['id']}", headers=admin_h).status_code == 404


def test_deleting_a_pool_with_nodes_is_409(client, admin, admin_h):
    pool = nodes.create_pool(admin, "busy")
    factories.make_node("busy-1", pool="busy")
    response = client.delete(f"/api/v1/pools/{pool.id}", headers=admin_h)
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "conflict"


@pytest.mark.parametrize("payload,field", [
    ({"name": "Bad Name"}, "name"),
    ({"name": "default"}, "name"),
    ({"name": 5}, "name"),
    ({}, "name"),
    ({"name": "ok", "region": "eu"}, "region"),
])
def test_bad_pool_values_are_422_naming_the_field(client, admin_h, payload, field):
    response = client.post("/api/v1/pools", headers=admin_h, json=payload)
    assert response.status_code == 422
    assert field in response.get_json()["error"]["fields"]


def test_client_gets_403_on_pool_writes(client, admin, alice):
    pool = nodes.create_pool(admin, "eu")
    headers = api_headers(alice)
    assert client.post("/api/v1/pools", headers=headers, json={"name": "x"}).status_code == 403
    assert client.put(f"/api/v1/pools/{pool.id}", headers=headers,
                      json={"name": "x"}).status_code == 403
    assert client.delete(f"/api/v1/pools/{pool.id}", headers=headers).status_code == 403
    names = [p["name"] for p in client.get("/api/v1/pools", headers=headers).get_json()["items"]]
    assert names == ["default", "eu"]
