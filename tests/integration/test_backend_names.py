"""Backend names are resolved when a site is saved, through a real DNS server: a name
that leads to a denied address is refused like the address itself."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.conftest import api_headers
from tests.pebble import ChallTestSrv


@pytest.fixture(scope="module")
def dns() -> Iterator[ChallTestSrv]:
    server = ChallTestSrv(default_ipv4="10.9.8.7")
    yield server
    server.stop()


def create(client, user, host: str, domain: str) -> tuple[int, dict]:
    response = client.post("/api/v1/sites", headers=api_headers(user), json={
        "domain": domain, "backends": [{"host": host, "port": 80}]})
    return response.status_code, response.get_json()


def test_a_name_resolving_to_a_denied_address_is_refused(app, client, alice, dns, monkeypatch):
    monkeypatch.setitem(app.config, "BACKEND_RESOLVERS", dns.dns_server)
    dns.set_a("metadata.attacker.test", ["169.254.169.254"])
    dns.set_a("node-loopback.attacker.test", ["127.0.0.1"])
    status, body = create(client, alice, "metadata.attacker.test", "a.example.com")
    assert status == 422, body
    assert body["error"]["fields"]["backends.0.host"] == (
        "is not allowed: metadata.attacker.test resolves to 169.254.169.254 is a cloud "
        "metadata address")
    monkeypatch.setitem(app.config, "BACKEND_ALLOWED_NETWORKS", "")
    status, body = create(client, alice, "node-loopback.attacker.test", "b.example.com")
    assert status == 422 and "127.0.0.0/8" in body["error"]["fields"]["backends.0.host"]
    # Any other name (challtestsrv answers every name with 10.9.8.7) is fine.
    assert create(client, alice, "app.internal.test", "c.example.com")[0] == 201


def test_a_silent_dns_server_cannot_hold_a_request_for_long(app, client, alice, monkeypatch):
    # A DNS "server" that reads queries and never answers, on loopback.
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        monkeypatch.setitem(app.config, "BACKEND_RESOLVERS",
                            f"127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setitem(app.config, "BACKEND_RESOLVE_SECONDS", 1.0)
        backends = [{"host": f"b{i}.slow.test", "port": 80} for i in range(32)]
        response = client.post("/api/v1/sites", headers=api_headers(alice), json={
            "domain": "slow.example.com", "backends": backends})
    finally:
        silent.close()
    assert response.status_code == 422
    fields = response.get_json()["error"]["fields"]
    # The budget ran out before the last names: they are refused, not waited for.
    assert "could not be checked in time" in fields["backends.31.host"]


def test_a_name_that_resolves_elsewhere_since_it_was_saved_is_refused_at_deploy(
        app, client, alice, dns, monkeypatch):
    """DNS rebinding: the name led to an allowed address when the site was saved and
    leads to the metadata service now; the deploy request is refused, naming it."""
    monkeypatch.setitem(app.config, "BACKEND_RESOLVERS", dns.dns_server)
    dns.set_a("api.rebinding.test", ["10.1.2.3"])
    status, body = create(client, alice, "api.rebinding.test", "rebound.example.com")
    assert status == 201, body
    dns.set_a("api.rebinding.test", ["169.254.169.254"])
    response = client.post(f"/api/v1/sites/{body['id']}/deploy", headers=api_headers(alice))
    assert response.status_code == 422
    assert "169.254.169.254" in response.get_json()["error"]["fields"]["backends.0.host"]
    dns.set_a("api.rebinding.test", ["10.1.2.3"])
    # Allowed again: the request gets as far as the pool (which has no node here).
    response = client.post(f"/api/v1/sites/{body['id']}/deploy", headers=api_headers(alice))
    assert response.status_code == 409
