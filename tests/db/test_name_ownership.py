"""Names belong to someone: a client cannot claim a name another client holds, one
under it or one over it (a wildcard included), nor anything over a public suffix."""

from __future__ import annotations

import re

import pytest

from tests.conftest import api_headers

BACKENDS = [{"host": "10.0.0.1", "port": 80}]


def create(client, user, domain: str, aliases: list[str] | None = None):
    return client.post("/api/v1/sites", headers=api_headers(user), json={
        "domain": domain, "aliases": aliases or [], "backends": BACKENDS})


@pytest.mark.parametrize(("held", "claimed", "field"), [
    ("shop.example.net", {"domain": "shop.example.net"}, "domain"),            # equal
    ("example.net", {"domain": "shop.example.net"}, "domain"),                 # under
    ("shop.example.net", {"domain": "example.net"}, "domain"),                 # over
    ("shop.example.net", {"aliases": ["*.example.net"]}, "aliases.0"),         # wildcard over
    ("a.b.example.net", {"aliases": ["*.example.net"]}, "aliases.0"),          # deeper
    ("*.example.net", {"domain": "shop.example.net"}, "domain"),               # under wildcard
])
def test_a_client_cannot_claim_a_name_equal_under_or_over_anothers(client, alice, bob, held,
                                                                    claimed, field):
    domain, aliases = (held, []) if not held.startswith("*.") else ("example.net", [held])
    assert create(client, alice, domain, aliases).status_code == 201
    response = create(client, bob, claimed.get("domain", "other.example.org"),
                      claimed.get("aliases"))
    assert response.status_code == 422, response.get_json()
    message = response.get_json()["error"]["fields"][field]
    assert "another" in message
    # Never another tenant's name: what is left once the claimed name is taken out.
    rest = message
    for name in (claimed.get("domain"), *claimed.get("aliases", [])):
        rest = rest.replace(name or "", "")
    assert held.removeprefix("*.") not in rest, message


def test_one_client_may_hold_a_domain_and_names_under_it(client, alice):
    assert create(client, alice, "example.net").status_code == 201
    assert create(client, alice, "shop.example.net", ["*.cdn.example.net"]).status_code == 201


@pytest.mark.parametrize(("domain", "aliases", "field"), [
    ("com", [], "domain"), ("co.uk", [], "domain"), ("github.io", [], "domain"),
    ("mine.example.com", ["*.com"], "aliases.0"),
    ("mine.example.com", ["*.co.uk"], "aliases.0"),
    ("mine.example.com", ["*.github.io"], "aliases.0"),
])
def test_nothing_is_claimed_over_a_public_suffix(client, alice, domain, aliases, field):
    response = create(client, alice, domain, aliases)
    assert response.status_code == 422
    # A single label is refused as no full name before the suffix list is asked.
    assert re.search("public suffix|fully qualified",
                     response.get_json()["error"]["fields"][field])


def test_names_under_a_public_suffix_stay_free_for_everyone(client, alice, bob):
    assert create(client, alice, "alice.github.io").status_code == 201
    assert create(client, bob, "bob.github.io").status_code == 201
    assert create(client, bob, "bob.example.test", ["*.bob.example.test"]).status_code == 201


@pytest.mark.parametrize(("domain", "aliases", "field"), [
    ("rpcc-probe.invalid", [], "domain"), ("shop.localhost", [], "domain"),
    ("printer.local", [], "domain"), ("mine.example.com", ["*.x.invalid"], "aliases.0"),
    ("mine.example.com", ["rpcc-probe.invalid"], "aliases.0"),
])
def test_reserved_names_and_the_probes_name_are_never_sites(client, alice, domain, aliases,
                                                            field):
    response = create(client, alice, domain, aliases)
    assert response.status_code == 422
    assert "reserved" in response.get_json()["error"]["fields"][field]
