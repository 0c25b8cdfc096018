"""A letsencrypt-mode site end to end through the API: the certificate comes from a
real Pebble (HTTP-01 answered by three real nginx nodes), is deployed with the
site's configuration, and every node serves it over TLS to a client that trusts
only Pebble's issuing root.  Renewal replaces it on every node; a failed attempt
leaves every node serving what it served before.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from flask.testing import FlaskClient
from sqlalchemy import delete, select

from app.extensions import db
from app.models import AcmeAccount, Certificate, DeploymentStatus, Site
from app.services import certificates, deployments
from tests import factories
from tests.conftest import api_headers
from tests.fleet import Backends, FleetNode
from tests.nginx_node import fetch
from tests.pebble import ChallTestSrv, Pebble, tokens_left

ADDRESSES = ("127.0.0.41", "127.0.0.42", "127.0.0.43")
DOMAIN, ALIAS = "shop.example.com", "www.shop.example.com"
NOWHERE = "127.0.0.99"


@pytest.fixture()
def http(app: Any, admin: Any, pebble: Pebble, tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> FlaskClient:
    """An API client, with the admin having pointed the control plane at Pebble."""
    monkeypatch.setattr(app, "instance_path", str(tmp_path))  # where the bundle is kept
    client = app.test_client()
    answer = client.put("/api/v1/settings/acme", headers=api_headers(admin), json={
        "directory_url": pebble.directory_url, "email": "ops@example.com",
        "ca_bundle_pem": Path(pebble.ca_bundle).read_text()})
    assert answer.status_code == 200, answer.get_json()
    return client


@pytest.fixture()
def site(alice: Any, fleet: list[FleetNode], dns: ChallTestSrv) -> Iterator[Site]:
    backends = Backends()
    backend = backends.start("shop")
    site = factories.make_site(alice, DOMAIN, aliases=[ALIAS], ssl_mode="letsencrypt",
                               backends=[{"host": "127.0.0.1", "port": backend.port}])
    rollout = deployments.wait(deployments.deploy_site(alice, site.id).id, timeout=120)
    assert rollout.status == DeploymentStatus.SUCCEEDED, rollout.error
    yield site
    backends.stop()
    for name in (DOMAIN, ALIAS):
        dns.clear_a(name)


def trusting(pebble: Pebble) -> ssl.SSLContext:
    """A client that trusts nothing but the root Pebble issues from."""
    return ssl.create_default_context(cadata=pebble.issuing_root())


def served(node: FleetNode, host: str, context: ssl.SSLContext) -> x509.Certificate:
    """The certificate the node presents for ``host`` (SNI), verified by ``context``."""
    with socket.create_connection((node.nginx.address, node.nginx.https_port),
                                  timeout=10) as sock, \
            context.wrap_socket(sock, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def served_serials(fleet: list[FleetNode], context: ssl.SSLContext) -> set[int]:
    serials = set()
    for node in fleet:
        for host in (DOMAIN, ALIAS):
            serials.add(served(node, host, context).serial_number)
            answer = fetch(node.nginx, host, tls=context)
            assert answer.status == 200 and answer.json()["backend"] == "shop"
    return serials


def request_and_wait(http: FlaskClient, alice: Any, site: Site) -> dict[str, Any]:
    started = http.post(f"/api/v1/sites/{site.id}/certificate", headers=api_headers(alice))
    assert started.status_code == 202, started.get_json()
    assert started.get_json()["status"] == "pending"
    cert_id = db.session.scalars(select(Certificate.id)
                                 .where(Certificate.site_id == site.id)).one()
    certificates.wait(cert_id)
    answer = http.get(f"/api/v1/sites/{site.id}/certificate", headers=api_headers(alice))
    assert answer.status_code == 200
    body: dict[str, Any] = answer.get_json()
    return body


def point(dns: ChallTestSrv, address: str) -> None:
    for name in (DOMAIN, ALIAS):
        dns.set_a(name, [address])


def test_a_letsencrypt_site_gets_renews_and_keeps_its_certificate(
        http: FlaskClient, alice: Any, site: Site, fleet: list[FleetNode],
        dns: ChallTestSrv, pebble: Pebble) -> None:
    context = trusting(pebble)
    with pytest.raises(OSError):  # nothing serves TLS before the certificate
        served(fleet[0], DOMAIN, context)

    point(dns, ADDRESSES[1])
    first = request_and_wait(http, alice, site)
    assert first["status"] == "valid", first
    assert (first["provider"], first["challenge"]) == ("acme", "http-01")
    assert sorted(first["domains"]) == sorted([DOMAIN, ALIAS])
    serials = served_serials(fleet, context)
    assert serials == {int(first["serial"], 16)}
    assert tokens_left(fleet) == {}

    # Renewal on request: a new certificate on every node.
    point(dns, ADDRESSES[2])
    renewed = request_and_wait(http, alice, site)
    assert renewed["status"] == "valid", renewed
    assert renewed["serial"] != first["serial"]
    assert served_serials(fleet, context) == {int(renewed["serial"], 16)}

    # Renewal by the scheduler once the certificate is close to its expiry.
    point(dns, ADDRESSES[0])
    cert = db.session.scalars(select(Certificate).where(Certificate.site_id == site.id)).one()
    assert cert.not_after is not None
    expiry = cert.not_after.replace(tzinfo=cert.not_after.tzinfo or UTC)  # SQLite: naive UTC
    summary = certificates.renew_due(now=expiry - timedelta(days=1))
    assert summary.startswith("1 certificate(s) obtained"), summary
    again = http.get(f"/api/v1/sites/{site.id}/certificate",
                     headers=api_headers(alice)).get_json()
    assert again["status"] == "valid" and again["serial"] not in (first["serial"],
                                                                  renewed["serial"])
    assert served_serials(fleet, context) == {int(again["serial"], 16)}

    # A failed attempt changes nothing on the nodes.  (A fresh account, so that Pebble
    # cannot skip the validation by reusing an authorization it already holds.)
    db.session.execute(delete(AcmeAccount))
    db.session.commit()
    before = {node.name: node.snapshot() for node in fleet}
    point(dns, NOWHERE)
    failed = request_and_wait(http, alice, site)
    assert failed["status"] == "failed"
    assert failed["last_error_code"] == "challenge_unreachable"
    assert DOMAIN in failed["last_error"] and "connection refused" in failed["last_error"]
    assert failed["serial"] == again["serial"] and failed["serving"] is True
    assert served_serials(fleet, context) == {int(again["serial"], 16)}
    assert {node.name: node.snapshot() for node in fleet} == before
    assert tokens_left(fleet) == {}


@pytest.mark.parametrize("deployed_first", [True, False],
                         ids=["deploy-in-flight", "never-deployed"])
def test_a_certificate_requested_before_the_site_is_live_waits_for_it(
        http: FlaskClient, alice: Any, fleet: list[FleetNode], dns: ChallTestSrv,
        pebble: Pebble, deployed_first: bool) -> None:
    """The CA asks the site's own name on the nodes: the request right after the
    first deploy request (or with no deploy at all) is served once the site is."""
    backends = Backends()
    try:
        backend = backends.start("shop")
        site = factories.make_site(alice, DOMAIN, aliases=[ALIAS], ssl_mode="letsencrypt",
                                   backends=[{"host": "127.0.0.1", "port": backend.port}])
        point(dns, ADDRESSES[2])
        if deployed_first:
            answer = http.post(f"/api/v1/sites/{site.id}/deploy", headers=api_headers(alice))
            assert answer.status_code == 202, answer.get_json()
        issued = request_and_wait(http, alice, site)
        assert issued["status"] == "valid", issued
        assert served_serials(fleet, trusting(pebble)) == {int(issued["serial"], 16)}
        assert tokens_left(fleet) == {}
    finally:
        backends.stop()
        for name in (DOMAIN, ALIAS):
            dns.clear_a(name)
