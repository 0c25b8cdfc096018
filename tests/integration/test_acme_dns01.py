"""ACME issuance with DNS-01 end to end: real Pebble resolving through a real Knot
DNS, the TXT records written and removed by RFC 2136 updates through the DNS
providers an administrator registered.  No proxy node is involved: DNS-01 proves
control of the names without serving anything."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from cryptography import x509

from app.models import Site, User
from app.services import dns_providers
from app.services.certificates import AcmeIssueError, AcmeSettings, Issued, issue
from tests import factories
from tests.knot import KnotServer, knot  # noqa: F401 - fixture
from tests.pebble import Pebble
from tests.processes import free_port

DOMAIN = "shop.example.com"
ALIASES = ["www.shop.example.com", "*.shop.example.com", "shop.example.net"]
WRONG_SECRET = base64.b64encode(b"not-the-key-the-server-knows-32b").decode()


@pytest.fixture(scope="module")
def pebble(knot: KnotServer) -> Iterator[Pebble]:  # noqa: F811
    # Nothing serves HTTP-01 here: the port is free and stays closed.
    server = Pebble(http_port=free_port(), dns_server=knot.address)
    yield server
    server.stop()


@pytest.fixture()
def settings(pebble: Pebble) -> AcmeSettings:
    return AcmeSettings(directory_url=pebble.directory_url, email="ops@example.com",
                        ca_bundle=pebble.ca_bundle)


@pytest.fixture()
def site(admin: User, alice: User, knot: KnotServer) -> Site:  # noqa: F811
    for zone in knot.zones:
        dns_providers.create_provider(admin, knot.provider_data(zone))
    return factories.make_site(alice, DOMAIN, aliases=ALIASES)


def challenge_names() -> set[str]:
    return {"_acme-challenge." + name.removeprefix("*.") for name in [DOMAIN, *ALIASES]}


def chain_of(issued: Issued) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(issued.chain_pem.encode())


def test_dns01_issues_for_the_domain_and_every_alias_and_cleans_up(
        site: Site, settings: AcmeSettings, pebble: Pebble,
        knot: KnotServer) -> None:  # noqa: F811
    issued = issue(site.id, settings, challenge="dns-01")

    chain = chain_of(issued)
    names = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {DOMAIN, *ALIASES}
    root = x509.load_pem_x509_certificate(pebble.issuing_root().encode())
    for child, parent in zip(chain, [*chain[1:], root], strict=True):
        child.verify_directly_issued_by(parent)
    # The base name and its wildcard were proven with two values at one name, and
    # every value is gone again.
    for name in challenge_names():
        assert knot.txt(name) == set(), name
    assert "[example.net.] DDNS, finished" in knot.log()


def test_a_name_outside_every_zone_fails_before_anything_is_written(
        alice: User, admin: User, settings: AcmeSettings,
        knot: KnotServer) -> None:  # noqa: F811
    dns_providers.create_provider(admin, knot.provider_data("example.com"))
    site = factories.make_site(alice, "shop.example.com", aliases=["shop.example.org"])

    with pytest.raises(AcmeIssueError) as failure:
        issue(site.id, settings, challenge="dns-01")

    assert failure.value.code == "dns_provider"
    assert "no DNS provider serves shop.example.org" in failure.value.message
    assert knot.txt("_acme-challenge.shop.example.com") == set()


def test_a_refused_update_explains_itself_and_leaves_no_record(
        alice: User, admin: User, settings: AcmeSettings,
        knot: KnotServer) -> None:  # noqa: F811
    dns_providers.create_provider(admin, knot.provider_data("example.com"))
    dns_providers.create_provider(admin, knot.provider_data("example.net",
                                                            tsig_secret=WRONG_SECRET))
    site = factories.make_site(alice, "api.example.com", aliases=["api.example.net"])

    with pytest.raises(AcmeIssueError) as failure:
        issue(site.id, settings, challenge="dns-01")

    assert failure.value.code == "dns_provider"
    assert "refused the update for zone example.net: NOTAUTH/BADSIG" in failure.value.message
    assert WRONG_SECRET not in failure.value.message
    assert knot.secret not in failure.value.message
    assert knot.txt("_acme-challenge.api.example.com") == set()
    assert knot.txt("_acme-challenge.api.example.net") == set()


def test_names_given_to_another_client_since_are_not_proven_with_the_dns_key(
        alice: User, bob: User, admin: User, settings: AcmeSettings,
        knot: KnotServer) -> None:  # noqa: F811
    from app.services import domain_grants

    dns_providers.create_provider(admin, knot.provider_data("example.com"))
    site = factories.make_site(alice, "api.example.com", aliases=["www.api.example.com"])
    domain_grants.grant(admin, bob.id, "api.example.com")

    with pytest.raises(AcmeIssueError) as failure:
        issue(site.id, settings, challenge="dns-01")

    assert failure.value.code == "invalid_request"
    assert failure.value.message.startswith(
        "api.example.com, www.api.example.com belong to another client now")
    assert "bob" not in failure.value.message
    assert knot.txt("_acme-challenge.api.example.com") == set()
