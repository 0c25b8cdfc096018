"""Backend names are resolved when a site is saved, through a real DNS server: a name
that leads to a denied address is refused like the address itself."""

from __future__ import annotations

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
