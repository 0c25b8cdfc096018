"""ACME issuance with HTTP-01 across a fleet: real Pebble, its DNS pointing the
site's names at one node or another, three real nginx nodes reached over a real
sshd, deployed through the deployments service first.

All nodes serve HTTP on one port (each on its own 127.0.0.x address), the port
Pebble validates on, so whichever node the name points at must answer the token.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from sqlalchemy import delete, select, text

from app.acme.client import new_account_key
from app.engines.base import acme_webroot
from app.extensions import db, ssh
from app.models import AcmeAccount, DeploymentStatus, Site
from app.services import deployments, nodes
from app.services.certificates import AcmeIssueError, AcmeSettings, Issued, issue
from tests import factories
from tests.caddy_node import CaddyNode
from tests.fleet import Backends, FleetNode, register_caddy
from tests.pebble import ChallTestSrv, Pebble, make_tls_files, tokens_left
from tests.sshd import FaultyRelay, SshServer

ADDRESSES = ("127.0.0.21", "127.0.0.22", "127.0.0.23")
DOMAIN, ALIAS = "shop.example.com", "www.shop.example.com"
NOWHERE = "127.0.0.99"  # no node listens there
CADDY_ADDRESS = "127.0.0.24"


@pytest.fixture()
def settings(pebble: Pebble) -> AcmeSettings:
    return AcmeSettings(directory_url=pebble.directory_url, email="ops@example.com",
                        ca_bundle=pebble.ca_bundle)


@pytest.fixture()
def site(alice: Any, fleet: list[FleetNode], dns: ChallTestSrv) -> Iterator[Site]:
    """The site deployed on the fleet; its backend is stopped and its names' DNS
    answers reset even if the deployment fails."""
    backends = Backends()
    with ExitStack() as teardown:
        for name in (DOMAIN, ALIAS):
            teardown.callback(dns.clear_servfail, name)
            teardown.callback(dns.clear_a, name)
        teardown.callback(backends.stop)
        backend = backends.start("shop")
        site = factories.make_site(alice, DOMAIN, aliases=[ALIAS],
                                   backends=[{"host": "127.0.0.1", "port": backend.port}])
        rollout = deployments.wait(deployments.deploy_site(alice, site.id).id, timeout=120)
        assert rollout.status == DeploymentStatus.SUCCEEDED, rollout.error
        yield site


def point(dns: ChallTestSrv, address: str) -> None:
    for name in (DOMAIN, ALIAS):
        dns.set_a(name, [address])


def tokens_served(node: FleetNode) -> set[str]:
    """The tokens the node has served (its sites' access logs and its main one)."""
    pattern = re.compile(r'"GET /\.well-known/acme-challenge/([A-Za-z0-9_-]+) HTTP/1\.1" 200 ')
    logs = [*Path(node.nginx.log_dir).glob("*.access.log"),
            node.nginx.prefix / "logs" / "access.log"]
    return {token for path in logs if path.exists()
            for token in pattern.findall(path.read_text())}


def check_chain(issued: Issued, pebble: Pebble) -> x509.Certificate:
    chain = x509.load_pem_x509_certificates(issued.chain_pem.encode())
    root = x509.load_pem_x509_certificate(pebble.issuing_root().encode())
    for child, parent in zip(chain, [*chain[1:], root], strict=True):
        child.verify_directly_issued_by(parent)
    names = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(names.get_values_for_type(x509.DNSName)) == sorted([DOMAIN, ALIAS])
    assert "BEGIN PRIVATE KEY" in issued.key_pem
    return chain[0]


def test_each_node_answers_the_ca_in_turn_and_keeps_no_token(
        site: Site, fleet: list[FleetNode], dns: ChallTestSrv, pebble: Pebble,
        settings: AcmeSettings) -> None:
    serials = set()
    for node in fleet:
        point(dns, node.nginx.address)
        before = {other.name: tokens_served(other) for other in fleet}
        issued = issue(site.id, settings)
        serials.add(check_chain(issued, pebble).serial_number)
        served = {other.name: len(tokens_served(other) - before[other.name])
                  for other in fleet}
        # Two names, two tokens, both fetched from the node the names point at.
        assert served == {other.name: 2 if other is node else 0 for other in fleet}
        assert tokens_left(fleet) == {}
        # A fresh account next time: Pebble now and then reuses an account's valid
        # authorization despite PEBBLE_AUTHZREUSE=0, and then asks for one token only.
        db.session.execute(delete(AcmeAccount))
        db.session.commit()
    assert len(serials) == len(fleet)


def test_a_name_pointing_where_no_node_listens_fails_as_unreachable(
        site: Site, fleet: list[FleetNode], dns: ChallTestSrv, settings: AcmeSettings) -> None:
    dns.set_a(DOMAIN, [ADDRESSES[1]])
    dns.set_a(ALIAS, [NOWHERE])
    with pytest.raises(AcmeIssueError) as failure:
        issue(site.id, settings)
    assert failure.value.code == "challenge_unreachable"
    message = str(failure.value)
    assert ALIAS in message and NOWHERE in message and "connection refused" in message
    assert "points at the nodes" in message
    assert tokens_left(fleet) == {}


def test_a_name_that_does_not_resolve_fails_as_dns_not_pointing(
        site: Site, fleet: list[FleetNode], dns: ChallTestSrv, settings: AcmeSettings) -> None:
    point(dns, ADDRESSES[2])
    dns.set_servfail(ALIAS)
    with pytest.raises(AcmeIssueError) as failure:
        issue(site.id, settings)
    assert failure.value.code == "dns_not_pointing"
    assert ALIAS in str(failure.value) and "could not resolve" in str(failure.value)
    assert tokens_left(fleet) == {}


def test_a_node_that_cannot_take_the_token_is_named_and_the_others_are_cleaned(
        site: Site, fleet: list[FleetNode], dns: ChallTestSrv, settings: AcmeSettings) -> None:
    point(dns, ADDRESSES[0])
    broken = fleet[1]
    # A file where the token directory must go: the node refuses every token.
    (broken.nginx.acme_root / ".well-known").mkdir(parents=True, exist_ok=True)
    (broken.nginx.acme_root / ".well-known" / "acme-challenge").write_text("in the way\n")
    with pytest.raises(AcmeIssueError) as failure:
        issue(site.id, settings)
    assert failure.value.code == "challenge_unreachable"
    message = str(failure.value)
    assert "node edge-1 " in message and "not a directory" in message
    assert "edge-0" not in message and "edge-2" not in message
    assert tokens_left([fleet[0], fleet[2]]) == {}
    assert tokens_served(fleet[0]) == set()  # the CA was never asked to look


def test_a_token_that_cannot_be_withdrawn_keeps_neither_the_others_nor_the_certificate(
        app: Any, admin: Any, site: Site, fleet: list[FleetNode], dns: ChallTestSrv,
        pebble: Pebble, settings: AcmeSettings, sshd: SshServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A node stalls while its first token is removed: that token stays, its other
    token and the other nodes' are still removed, and the issuance still succeeds."""
    point(dns, ADDRESSES[0])
    stalling = fleet[1]
    relay = FaultyRelay(sshd.port)
    try:
        nodes.update_node(admin, stalling.id, {"ssh_port": relay.port})
        monkeypatch.setitem(app.config, "SSH_OPERATION_TIMEOUT", 2.0)
        monkeypatch.setitem(app.config, "SSH_RETRIES", 0)
        ssh.reset(app)
        pool = ssh.pool(app)
        remove_tree = pool.remove_tree
        stalled: list[str] = []

        def stall_once(target: Any, path: str) -> None:
            if target.node_id != stalling.id or stalled:
                return remove_tree(target, path)
            stalled.append(path)
            relay.stall()
            try:
                return remove_tree(target, path)
            finally:
                relay.resume()

        monkeypatch.setattr(pool, "remove_tree", stall_once)
        check_chain(issue(site.id, settings), pebble)
        assert len(stalled) == 1
        assert tokens_left(fleet) == {stalling.name: [Path(stalled[0]).name]}
    finally:
        relay.close()


def test_the_account_is_registered_once_and_reused(
        site: Site, fleet: list[FleetNode], dns: ChallTestSrv, pebble: Pebble,
        settings: AcmeSettings) -> None:
    point(dns, ADDRESSES[0])
    issue(site.id, settings)
    first = db.session.scalars(select(AcmeAccount)).one()
    assert first.directory_url == pebble.directory_url
    assert first.uri.startswith(pebble.directory_url.removesuffix("/dir") + "/my-account/")
    uri, key = first.uri, first.key_pem
    changed = replace(settings, email="certs@example.com")
    issue(site.id, changed)
    db.session.expire_all()
    account = db.session.scalars(select(AcmeAccount)).one()
    assert (account.uri, account.key_pem) == (uri, key)
    assert account.email == "certs@example.com"
    # The key is stored encrypted.
    raw = db.session.execute(text("SELECT key_pem FROM acme_accounts")).scalar_one()
    assert "PRIVATE KEY" not in raw


def test_a_ca_not_signed_by_the_bundle_is_unreachable_with_the_tls_reason(
        site: Site, fleet: list[FleetNode], settings: AcmeSettings, tmp_path: Path) -> None:
    other_ca, _, _ = make_tls_files(tmp_path, "some other CA")
    with pytest.raises(AcmeIssueError) as failure:
        issue(site.id, replace(settings, ca_bundle=str(other_ca)))
    assert failure.value.code == "ca_unreachable"
    assert "certificate verify failed" in str(failure.value)
    assert "CA bundle" in str(failure.value)
    assert db.session.scalars(select(AcmeAccount)).all() == []


def test_the_pre_check_refuses_a_name_pointing_elsewhere_before_asking_the_ca(
        app: Any, site: Site, fleet: list[FleetNode], dns: ChallTestSrv, pebble: Pebble,
        settings: AcmeSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(app.config, "ACME_PRECHECK_RESOLVERS", dns.dns_server)
    point(dns, ADDRESSES[1])
    dns.set_a(ALIAS, ["127.0.0.98"])
    with pytest.raises(AcmeIssueError) as failure:
        issue(site.id, settings)
    assert failure.value.code == "dns_not_pointing"
    assert str(failure.value).startswith(f"{ALIAS} resolves to 127.0.0.98, which is not one")
    assert db.session.scalars(select(AcmeAccount)).all() == []  # the CA was not contacted

    point(dns, ADDRESSES[1])
    check_chain(issue(site.id, settings), pebble)


def test_an_account_the_ca_forgot_is_registered_again_with_its_key(
        site: Site, fleet: list[FleetNode], dns: ChallTestSrv, pebble: Pebble,
        settings: AcmeSettings) -> None:
    # As after the CA was reset: a stored account whose key the CA never saw.
    stale = f"{pebble.directory_url.removesuffix('/dir')}/my-account/forgotten"
    db.session.add(AcmeAccount(directory_url=settings.directory_url, email=settings.email,
                               key_pem=new_account_key(), uri=stale))
    db.session.commit()
    key = db.session.scalars(select(AcmeAccount)).one().key_pem
    point(dns, ADDRESSES[2])
    check_chain(issue(site.id, settings), pebble)
    db.session.expire_all()
    account = db.session.scalars(select(AcmeAccount)).one()
    assert account.key_pem == key and account.uri not in ("", stale)


def test_a_caddy_node_of_the_pool_answers_the_ca_too(
        admin: Any, alice: Any, site: Site, fleet: list[FleetNode], dns: ChallTestSrv,
        pebble: Pebble, settings: AcmeSettings, sshd: SshServer, http_port: int,
        tmp_path: Path) -> None:
    caddy = CaddyNode(tmp_path, listen_address=CADDY_ADDRESS)
    caddy.spec = replace(caddy.spec, http_port=http_port)
    caddy.apply([])
    try:
        spec = caddy.spec
        register_caddy(admin, caddy, "caddy-0", sshd.port, sshd.client_key_text)
        rollout = deployments.wait(deployments.deploy_site(alice, site.id).id, timeout=120)
        assert rollout.status == DeploymentStatus.SUCCEEDED, rollout.error
        point(dns, CADDY_ADDRESS)  # only Caddy can answer the CA now
        before = {node.name: tokens_served(node) for node in fleet}
        check_chain(issue(site.id, settings), pebble)
        assert {node.name: tokens_served(node) - before[node.name] for node in fleet} == {
            node.name: set() for node in fleet}
        challenge_dir = Path(acme_webroot(spec)) / ".well-known" / "acme-challenge"
        assert challenge_dir.is_dir() and list(challenge_dir.iterdir()) == []
        assert tokens_left(fleet) == {}
    finally:
        caddy.stop()
