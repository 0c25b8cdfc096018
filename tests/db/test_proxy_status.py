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
                                  {"status_port": 0}, {"status_port": 70000}])
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
    assert refused.value.fields == {"status_port": "must differ from the HTTP and HTTPS ports"}


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
