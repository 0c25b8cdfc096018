"""A node's status port and the refusals that need no node: where the proxy's
counters are read is the node's own setting, never one of its sites' ports, and the
control plane reads nothing off the node's loopback.  Real reads are in
tests/integration/test_proxy_status.py."""

from __future__ import annotations

import pytest

from app.engines import get_engine
from app.errors import ValidationError
from app.services import nodes, rendering
from app.services.monitoring.proxy_status import ProxyStatusUnavailable, read_proxy_status
from tests import factories
from tests.conftest import api_headers


def test_an_administrator_sets_a_nodes_status_port_through_the_api(client, admin):
    headers = api_headers(admin)
    created = client.post("/api/v1/nodes", headers=headers, json={
        "name": "edge-1", "host": "192.0.2.10", "ssh_private_key": factories.ssh_key(),
        "status_port": 9100})
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert body["status_port"] == 9100
    node = nodes.get_node(admin, body["id"])
    endpoint = get_engine("nginx").status_endpoint(rendering.node_spec(node))
    assert endpoint is not None and endpoint.host_header == "127.0.0.1:9100"
    back = client.patch(f"/api/v1/nodes/{body['id']}", headers=headers,
                        json={"status_port": None})
    assert back.status_code == 200 and back.get_json()["status_port"] is None
    endpoint = get_engine("nginx").status_endpoint(rendering.node_spec(nodes.get_node(
        admin, body["id"])))
    assert endpoint is not None and endpoint.port == 8899


@pytest.mark.parametrize("data", [{"status_port": 80}, {"status_port": 8443,
                                                        "https_port": 8443},
                                  {"status_port": 22}, {"status_port": 2222,
                                                        "ssh_port": 2222},
                                  {"status_port": 0}, {"status_port": 70000},
                                  {"status_port": "9100"}, {"status_port": True}])
def test_a_status_port_that_is_a_site_port_or_no_port_is_refused_with_its_field(
        client, admin, data):
    response = client.post("/api/v1/nodes", headers=api_headers(admin), json={
        "name": "edge-1", "host": "192.0.2.10", "ssh_private_key": factories.ssh_key(),
        **data})
    assert response.status_code == 422
    assert set(response.get_json()["error"]["fields"]) == {"status_port"}


def test_moving_the_http_port_onto_the_status_port_is_refused(admin):
    node = factories.make_node("edge-2", status_port=9100)
    with pytest.raises(ValidationError) as refused:
        nodes.update_node(admin, node.id, {"http_port": 9100})
    assert refused.value.fields == {"status_port": "is the node's HTTP port: it must differ "
                                                   "from the SSH, HTTP and HTTPS ports"}
    with pytest.raises(ValidationError) as refused:
        nodes.update_node(admin, node.id, {"ssh_port": 9100})
    assert refused.value.fields == {"status_port": "is the node's SSH port: it must differ "
                                                   "from the SSH, HTTP and HTTPS ports"}


NODE_FORM = {"name": "edge-form", "host": "192.0.2.20", "ssh_port": "2222",
             "ssh_user": "root", "proxy_type": "nginx", "pool": "default",
             "http_port": "80", "https_port": "443", "enabled": "y"}


def test_an_administrator_sets_the_status_port_in_the_node_form(db, admin, admin_client):
    form = admin_client.get("/admin/nodes/new").get_data(as_text=True)
    assert 'name="status_port"' in form and "blank: 8899" in form
    created = admin_client.post("/admin/nodes/new", data={
        **NODE_FORM, "ssh_private_key": factories.ssh_key(), "status_port": "9100"})
    assert created.status_code == 302, created.get_data(as_text=True)
    node = nodes.list_nodes(admin, q="edge-form").items[0]
    assert node.status_port == 9100
    page = admin_client.get(f"/admin/nodes/{node.id}").get_data(as_text=True)
    assert "read at <code>127.0.0.1:9100</code> on the node" in page
    assert '<span data-status-port>9100</span>.' in page
    edit = admin_client.get(f"/admin/nodes/{node.id}/edit").get_data(as_text=True)
    assert 'name="status_port" type="number" value="9100"' in edit

    # Blank: the engine's default again.
    saved = admin_client.post(f"/admin/nodes/{node.id}/edit",
                              data={**NODE_FORM, "status_port": ""})
    assert saved.status_code == 302
    db.session.expire_all()
    assert nodes.get_node(admin, node.id).status_port is None
    page = admin_client.get(f"/admin/nodes/{node.id}").get_data(as_text=True)
    assert "read at <code>127.0.0.1:8899</code> on the node" in page
    assert "(the engine's default)" in page


@pytest.mark.parametrize("value,message", [
    ("2222", "is the node&#39;s SSH port: it must differ from the SSH, HTTP and HTTPS ports"),
    ("443", "is the node&#39;s HTTPS port"),
    ("70000", "must be a number between 1 and 65535"),
    ("status", "Not a valid integer value."),
])
def test_a_status_port_the_form_refuses_is_told_under_its_field(
        db, admin, admin_client, value, message):
    node = factories.make_node("edge-kept", ssh_port=2222, status_port=9100)
    refused = admin_client.post(f"/admin/nodes/{node.id}/edit",
                                data={**NODE_FORM, "name": "edge-kept", "status_port": value})
    assert refused.status_code == 422
    text = refused.get_data(as_text=True)
    assert 'id="status_port-error"' in text and message in text
    db.session.expire_all()
    assert nodes.get_node(admin, node.id).status_port == 9100


def test_a_client_cannot_set_a_nodes_status_port(client, admin, alice):
    node = factories.make_node("edge-3")
    response = client.patch(f"/api/v1/nodes/{node.id}", headers=api_headers(alice),
                            json={"status_port": 9100})
    assert response.status_code == 403
    assert nodes.get_node(admin, node.id).status_port is None


def test_traefik_nodes_say_their_counters_are_not_read(admin):
    node = factories.make_node("edge-t", proxy_type="traefik")
    with pytest.raises(ProxyStatusUnavailable, match="does not read the connections and "
                                                     "requests of traefik nodes"):
        read_proxy_status(node)


def test_a_caddy_admin_endpoint_off_the_nodes_loopback_is_never_reached(admin):
    """The reload command names where Caddy's admin endpoint is; an address off the
    node's loopback would make the node connect elsewhere for the control plane."""
    node = factories.make_node(
        "edge-c", proxy_type="caddy",
        reload_command="caddy reload --config /etc/caddy/Caddyfile --adapter caddyfile "
                       "--address 192.0.2.99:2019")
    with pytest.raises(ProxyStatusUnavailable, match="read on the node's loopback only"):
        read_proxy_status(node)
