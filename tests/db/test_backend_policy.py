"""Where a client's backends may point: never the cloud metadata service, the nodes
themselves or a network an administrator closed, in whatever spelling."""

from __future__ import annotations

import pytest

from app.extensions import db as _db
from app.models import Site
from tests import factories
from tests.conftest import api_headers

METADATA_SPELLINGS = ["169.254.169.254", "0xa9fea9fe", "2852039166", "0251.0376.0251.0376",
                      "::ffff:169.254.169.254", "[::ffff:a9fe:a9fe]", "fd00:ec2::254",
                      "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1", "0xa9.0xfe.0xa9.0xfe",
                      "169.254.43518"]
LOOPBACK_SPELLINGS = ["127.0.0.1", "0x7f000001", "2130706433", "0177.0.0.1", "127.1",
                      "::1", "[::1]", "::ffff:127.0.0.1", "0.0.0.0", "::"]


def create(client, user, host: str, domain: str = "policy.example.com") -> tuple[int, dict]:
    response = client.post("/api/v1/sites", headers=api_headers(user), json={
        "domain": domain, "backends": [{"host": host, "port": 80}]})
    return response.status_code, response.get_json()


@pytest.mark.parametrize("host", METADATA_SPELLINGS)
def test_metadata_addresses_are_refused_in_every_spelling(client, alice, host):
    status, body = create(client, alice, host)
    assert status == 422, body
    assert "backends.0.host" in body["error"]["fields"]
    assert _db.session.query(Site).count() == 0


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_loopback_is_refused_unless_allowed(app, client, alice, host, monkeypatch):
    monkeypatch.setitem(app.config, "BACKEND_ALLOWED_NETWORKS", "")
    status, body = create(client, alice, host)
    assert status == 422 and "backends.0.host" in body["error"]["fields"], body


def test_an_allowed_network_lets_loopback_through(client, alice):
    # The test configuration allows 127.0.0.0/8, as local trials do.
    status, body = create(client, alice, "127.0.0.1")
    assert status == 201, body


def test_a_broad_allowed_network_does_not_open_the_metadata_service(app, client, alice,
                                                                   monkeypatch):
    monkeypatch.setitem(app.config, "BACKEND_ALLOWED_NETWORKS", "169.254.0.0/16, 0.0.0.0/0")
    status, body = create(client, alice, "169.254.169.254")
    assert status == 422 and "metadata" in body["error"]["fields"]["backends.0.host"]
    assert create(client, alice, "169.254.10.10")[0] == 201  # link-local itself was allowed
    monkeypatch.setitem(app.config, "BACKEND_ALLOWED_NETWORKS", "169.254.169.254/32")
    assert create(client, alice, "169.254.169.254", "metadata.example.com")[0] == 201


def test_the_nodes_own_addresses_are_refused(app, client, alice, monkeypatch):
    factories.make_node("edge-x", host="10.20.30.40", listen_address="10.20.30.41")
    for host in ("10.20.30.40", "10.20.30.41", "0x0a141e28"):
        status, body = create(client, alice, host)
        assert status == 422 and "backends.0.host" in body["error"]["fields"], (host, body)
    assert create(client, alice, "10.20.30.42", "fine.example.com")[0] == 201


def test_an_administrator_can_close_a_network(app, client, alice, monkeypatch):
    monkeypatch.setitem(app.config, "BACKEND_DENIED_NETWORKS", "10.0.0.0/8")
    status, body = create(client, alice, "10.1.2.3")
    assert status == 422 and "10.0.0.0/8" in body["error"]["fields"]["backends.0.host"]
    # Metadata stays denied even when the list no longer names link-local.
    assert create(client, alice, "169.254.169.254")[0] == 422


def test_the_site_form_shows_the_refusal_under_the_backends(alice_client):
    response = alice_client.post("/client/sites/new", data={
        "domain": "form.example.com", "backends": "127.0.0.1:80\n0xa9fea9fe:80",
        "backend_protocol": "http", "pool": "default", "ssl_mode": "none", "waf_level": "off",
        "geo_mode": "off", "cache_ttl": "300", "rate_limit_burst": "0"})
    assert response.status_code == 422
    assert "line 2" in response.get_data(as_text=True)
    assert "metadata" in response.get_data(as_text=True)
