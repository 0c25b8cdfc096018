"""/api/v1/nodes (administrators): write-only SSH secrets, filters, 409 on delete."""

from __future__ import annotations

import pytest

from app.services import nodes
from tests import factories
from tests.conftest import api_headers

NODE_FIELDS = {
    "id",
    "name",
    "host",
    "ssh_port",
    "ssh_user",
    "has_ssh_private_key",
    "has_ssh_password",
    "proxy_type",
    "pool",
    "config_dir",
    "test_command",
    "reload_command",
    "listen_address",
    "http_port",
    "https_port",
    "glances_url",
    "enabled",
    "log_dir",
    "cache_dir",
    "geoip_db_path",
    "status",
    "host_key",
    "is_discovered",
    "last_seen",
    "main_config",
    "status_port",
    "host_key_fingerprint",
    "pending_host_key_fingerprint",
    "last_check",
    "last_check_at",
    "drifted",
    "drift_details",
    "drift_checked_at",
}


@pytest.fixture()
def admin_h(admin):
    return api_headers(admin)


def test_admin_registers_node_and_never_sees_the_key_again(client, admin_h):
    key = factories.ssh_key()
    response = client.post(
        "/api/v1/nodes",
        headers=admin_h,
        json={
            "name": "edge-1",
            "host": "192.0.2.10",
            "ssh_private_key": key,
            "proxy_type": "caddy",
            "listen_address": "192.0.2.10",
            "glances_url": "http://192.0.2.10:61208",
        },
    )
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert set(body) == NODE_FIELDS
    assert body["has_ssh_private_key"] is True and body["has_ssh_password"] is False
    assert (body["ssh_port"], body["ssh_user"], body["pool"]) == (22, "root", "default")
    assert (body["http_port"], body["https_port"]) == (80, 443)
    assert body["config_dir"] == "/etc/caddy/rpcc.d" and body["status"] == "unknown"
    assert body["is_discovered"] is False and body["host_key"] is None
    assert "PRIVATE KEY" not in response.get_data(as_text=True)
    again = client.get(f"/api/v1/nodes/{body['id']}", headers=admin_h)
    assert "PRIVATE KEY" not in again.get_data(as_text=True)


def test_every_null_of_a_new_node_is_declared_nullable(client, admin_h):
    """A client generated from the document must accept the answer it gets."""
    node = factories.make_node("edge-new")
    body = client.get(f"/api/v1/nodes/{node.id}", headers=admin_h).get_json()
    document = client.get("/api/v1/openapi.json").get_json()
    declared = document["components"]["schemas"]["Node"]["properties"]
    nulls = sorted(key for key, value in body.items() if value is None)
    assert {"host_key_fingerprint", "pending_host_key_fingerprint"} <= set(nulls)
    assert [key for key in nulls if not declared[key].get("nullable")] == []


def test_password_is_write_only(client, admin_h):
    node = factories.make_node("edge-2")
    response = client.patch(
        f"/api/v1/nodes/{node.id}", headers=admin_h, json={"ssh_password": "hunter2-hunter2"}
    )
    assert response.status_code == 200
    assert response.get_json()["has_ssh_password"] is True
    listed = client.get("/api/v1/nodes", headers=admin_h)
    for text in (response.get_data(as_text=True), listed.get_data(as_text=True)):
        assert "hunter2" not in text and '"ssh_password"' not in text


def test_node_without_any_ssh_secret_is_422(client, admin_h):
    response = client.post(
        "/api/v1/nodes", headers=admin_h, json={"name": "edge-3", "host": "192.0.2.11"}
    )
    assert response.status_code == 422
    assert "ssh_private_key" in response.get_json()["error"]["fields"]


def test_list_filters_by_pool_and_name_and_paginates(client, admin, admin_h):
    nodes.create_pool(admin, "eu")
    factories.make_node("eu-1", pool="eu")
    factories.make_node("eu-2", pool="eu")
    factories.make_node("us-1")
    body = client.get("/api/v1/nodes?per_page=2", headers=admin_h).get_json()
    assert (body["page"], body["per_page"], body["total"]) == (1, 2, 3)
    assert [n["name"] for n in body["items"]] == ["eu-1", "eu-2"]
    eu = client.get("/api/v1/nodes?pool=eu", headers=admin_h).get_json()
    assert {n["name"] for n in eu["items"]} == {"eu-1", "eu-2"}
    found = client.get("/api/v1/nodes?q=us", headers=admin_h).get_json()
    assert [n["name"] for n in found["items"]] == ["us-1"]


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_put_and_patch_keep_unsent_fields(client, admin_h, method):
    node = factories.make_node("edge-4", ssh_port=2222)
    response = client.open(
        f"/api/v1/nodes/{node.id}",
        method=method,
        headers=admin_h,
        json={"enabled": False, "https_port": 8443},
    )
    body = response.get_json()
    assert response.status_code == 200, body
    assert (body["enabled"], body["https_port"], body["ssh_port"]) == (False, 8443, 2222)
    assert body["has_ssh_private_key"] is True


@pytest.mark.parametrize(
    "payload,field",
    [
        ({"host": "a;b"}, "host"),
        ({"name": "Bad Name"}, "name"),
        ({"ssh_port": "22"}, "ssh_port"),
        ({"ssh_port": 70000}, "ssh_port"),
        ({"enabled": "true"}, "enabled"),
        ({"proxy_type": "apache"}, "proxy_type"),
        ({"reload_command": "nginx -s reload; rm -rf /"}, "reload_command"),
        ({"ssh_private_key": "not a key"}, "ssh_private_key"),
        ({"glances_url": "ftp://x"}, "glances_url"),
        ({"geoip_db_path": "/usr/share/../etc/shadow"}, "geoip_db_path"),
        ({"log_dir": "logs; rm -rf /"}, "log_dir"),
        ({"pool": "nowhere"}, "pool"),
        ({"status": "online"}, "status"),
        ({"has_ssh_password": True}, "has_ssh_password"),
    ],
)
def test_bad_values_are_422_naming_the_field(client, admin_h, payload, field):
    node = factories.make_node("edge-5")
    response = client.patch(f"/api/v1/nodes/{node.id}", headers=admin_h, json=payload)
    assert response.status_code == 422
    assert field in response.get_json()["error"]["fields"]


def test_duplicate_name_is_422(client, admin_h):
    factories.make_node("edge-6")
    response = client.post(
        "/api/v1/nodes",
        headers=admin_h,
        json={"name": "edge-6", "host": "192.0.2.12", "ssh_password": "pw-pw-pw-pw"},
    )
    assert response.status_code == 422
    assert "name" in response.get_json()["error"]["fields"]


def test_deleting_node_that_serves_active_sites_is_409_then_204_once_disabled(
    client, admin_h, alice
):
    node = factories.make_node("edge-7")
    factories.make_site(alice, "served.example.com")
    response = client.delete(f"/api/v1/nodes/{node.id}", headers=admin_h)
    assert response.status_code == 409
    error = response.get_json()["error"]
    assert error["code"] == "conflict" and "served.example.com" in error["message"]
    client.patch(f"/api/v1/nodes/{node.id}", headers=admin_h, json={"enabled": False})
    assert client.delete(f"/api/v1/nodes/{node.id}", headers=admin_h).status_code == 204
    assert client.get(f"/api/v1/nodes/{node.id}", headers=admin_h).status_code == 404


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
def test_client_gets_403_on_every_node_method(client, alice, method):
    node = factories.make_node("edge-8")
    response = client.open(
        f"/api/v1/nodes/{node.id}",
        method=method,
        headers=api_headers(alice),
        json={"enabled": False},
    )
    assert response.status_code == 403
    assert nodes.get_node(factories.make_user("admin"), node.id).enabled is True


def test_client_gets_403_before_the_body_is_checked(client, alice):
    response = client.post("/api/v1/nodes", headers=api_headers(alice), json={"bogus": 1})
    assert response.status_code == 403


def test_missing_node_is_404(client, admin_h):
    assert client.get("/api/v1/nodes/999", headers=admin_h).status_code == 404
