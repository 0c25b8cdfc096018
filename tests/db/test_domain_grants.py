"""Domains administrators give to one client: no other client may claim names with
them, under them or over them, whoever is quicker."""

from __future__ import annotations

import pytest

from app.models import AuditLog
from tests import factories
from tests.conftest import api_headers


@pytest.fixture()
def as_admin(admin):
    return api_headers(admin)


def grant(client, headers, user_id: int, name: str):
    return client.post(f"/api/v1/users/{user_id}/domains", headers=headers, json={"name": name})


def create(client, user, domain: str, aliases: list[str] | None = None):
    return client.post("/api/v1/sites", headers=api_headers(user), json={
        "domain": domain, "aliases": aliases or [],
        "backends": [{"host": "127.0.0.1", "port": 8080}]})


def test_a_granted_domain_is_its_clients_only(client, as_admin, alice, bob):
    answer = grant(client, as_admin, alice.id, "example.net")
    assert answer.status_code == 201, answer.get_json()
    assert answer.get_json()["in_use_by_others"] == []
    bob_headers = api_headers(bob)
    for domain, aliases, field in (
            ("example.net", [], "domain"),
            ("shop.example.net", [], "domain"),
            ("deep.shop.example.net", [], "domain"),
            ("bob3.example.org", ["*.example.net"], "aliases.0"),
            ("bob.example.org", ["www.example.net"], "aliases.0"),
            ("bob2.example.org", ["*.shop.example.net"], "aliases.0")):
        refused = client.post("/api/v1/sites", headers=bob_headers, json={
            "domain": domain, "aliases": aliases,
            "backends": [{"host": "127.0.0.1", "port": 8080}]})
        assert refused.status_code == 422, (domain, refused.get_json())
        message = refused.get_json()["error"]["fields"][field]
        assert "held by another client" in message
        assert "alice" not in message  # never whose
    # Names next to it are anyone's.
    assert create(client, bob, "example.org").status_code == 201
    assert create(client, bob, "notexample.net").status_code == 201
    # Alice takes what is hers.
    assert create(client, alice, "shop.example.net", ["*.example.net"]).status_code == 201


def test_a_grant_over_a_granted_domain_would_take_it_back_so_it_is_refused(
        client, as_admin, alice, bob):
    assert grant(client, as_admin, alice.id, "shop.example.net").status_code == 201
    for name in ("example.net", "shop.example.net", "a.shop.example.net"):
        refused = grant(client, as_admin, bob.id, name)
        assert refused.status_code == 422
        assert refused.get_json()["error"]["fields"]["name"] == (
            "overlaps shop.example.net, given to alice already")
    assert grant(client, as_admin, bob.id, "other.example.net").status_code == 201


@pytest.mark.parametrize(("name", "said"), [
    ("co.uk", "public suffix"), ("github.io", "public suffix"), ("*.example.net", ""),
    ("rpcc-probe.invalid", "reserved"), ("", ""), ("a b.example", ""),
    ("example.net\nserver_name evil", ""), (["list"], ""),
])
def test_only_registered_domains_can_be_given(client, as_admin, alice, name, said):
    refused = grant(client, as_admin, alice.id, name)
    assert refused.status_code == 422
    assert said in refused.get_json()["error"]["fields"]["name"]


def test_the_grant_says_which_names_other_clients_use_already(client, as_admin, alice, bob):
    factories.make_site(bob, "bob.example.net", aliases=["www.bob.example.net"])
    factories.make_site(bob, "bob.example.org")
    answer = grant(client, as_admin, alice.id, "example.net")
    assert answer.status_code == 201
    assert answer.get_json()["in_use_by_others"] == ["bob.example.net", "www.bob.example.net"]


def test_taking_a_domain_back_opens_it_and_both_are_audited(client, as_admin, alice, bob):
    row = grant(client, as_admin, alice.id, "example.net").get_json()
    listed = client.get(f"/api/v1/users/{alice.id}/domains", headers=as_admin).get_json()
    assert [g["name"] for g in listed["items"]] == ["example.net"]
    assert listed["items"][0]["created_at"].endswith("+00:00")
    assert create(client, bob, "shop.example.net").status_code == 422
    # The grant is Alice's: it cannot be taken back through another user's address.
    assert client.delete(f"/api/v1/users/{bob.id}/domains/{row['id']}",
                         headers=as_admin).status_code == 404
    assert client.delete(f"/api/v1/users/{alice.id}/domains/{row['id']}",
                         headers=as_admin).status_code == 204
    assert create(client, bob, "shop.example.net").status_code == 201
    actions = [e.action for e in AuditLog.query.order_by(AuditLog.id)]
    assert "domain.grant" in actions and "domain.revoke" in actions


def test_clients_can_neither_read_nor_give_domains(client, alice, bob):
    headers = api_headers(alice)
    assert client.get(f"/api/v1/users/{alice.id}/domains", headers=headers).status_code == 403
    assert grant(client, headers, alice.id, "example.net").status_code == 403
    assert client.delete(f"/api/v1/users/{bob.id}/domains/1", headers=headers).status_code == 403


def test_an_unknown_user_is_404(client, as_admin):
    assert grant(client, as_admin, 999999, "example.net").status_code == 404
    assert client.get("/api/v1/users/999999/domains", headers=as_admin).status_code == 404
