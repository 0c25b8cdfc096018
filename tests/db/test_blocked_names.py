"""A blocked name stays blocked when its owner deletes the site and creates it again,
whoever creates it, until an administrator lifts the block."""

from __future__ import annotations

from app.services import sites
from tests import factories
from tests.conftest import api_headers

BACKENDS = [{"host": "10.0.0.1", "port": 80}]


def create(client, user, domain: str, aliases: list[str] | None = None) -> dict:
    response = client.post("/api/v1/sites", headers=api_headers(user), json={
        "domain": domain, "aliases": aliases or [], "backends": BACKENDS})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def test_deleting_and_creating_again_does_not_lift_a_block(client, admin, alice, bob):
    site = create(client, alice, "phish.example.com", ["login.phish.example.com"])
    sites.set_blocked(admin, site["id"], True, "phishing reported")
    assert client.delete(f"/api/v1/sites/{site['id']}",
                         headers=api_headers(alice)).status_code == 204
    again = create(client, alice, "phish.example.com")
    assert again["blocked"] is True and again["blocked_reason"] == "phishing reported"
    # Another client taking the alias once the names are free gets the block too.
    client.delete(f"/api/v1/sites/{again['id']}", headers=api_headers(alice))
    other = create(client, bob, "login.phish.example.com")
    assert other["blocked"] is True


def test_a_client_cannot_unblock_by_renaming_or_editing(client, admin, alice):
    site = create(client, alice, "spam.example.com")
    sites.set_blocked(admin, site["id"], True, "spam")
    renamed = client.patch(f"/api/v1/sites/{site['id']}", headers=api_headers(alice),
                           json={"domain": "clean.example.com"}).get_json()
    assert renamed["blocked"] is True  # the site itself stays blocked
    back = client.patch(f"/api/v1/sites/{site['id']}", headers=api_headers(alice),
                        json={"domain": "spam.example.com"}).get_json()
    assert back["blocked"] is True


def test_an_administrator_unblocking_lifts_the_names(client, admin, alice):
    site = create(client, alice, "wrongly.example.com")
    sites.set_blocked(admin, site["id"], True, "mistake")
    sites.set_blocked(admin, site["id"], False, "")
    client.delete(f"/api/v1/sites/{site['id']}", headers=api_headers(alice))
    assert create(client, alice, "wrongly.example.com")["blocked"] is False
    assert factories.make_site(alice, "fresh.example.com").blocked is False
