"""Administrators edit the backend address policy in Settings and the API: strict
CIDRs, the environment's values until changed, every change audited, the policy in
force shown entry by entry, and a site's save checked against what is stored."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest
from sqlalchemy import select

from app.errors import Forbidden, ValidationError
from app.extensions import db as _db
from app.models import AuditLog, Setting
from app.services import settings
from tests import factories
from tests.conftest import api_headers

# The test configuration's environment: loopback allowed (tests run backends there).
ENV_ALLOWED = ["127.0.0.0/8", "::1/128"]


def create_site(client: Any, user: Any, host: str, domain: str) -> tuple[int, dict]:
    response = client.post("/api/v1/sites", headers=api_headers(user), json={
        "domain": domain, "backends": [{"host": host, "port": 80}]})
    return response.status_code, response.get_json()


def effective(policy: dict[str, Any], network: str) -> dict[str, Any]:
    return next(entry for entry in policy["effective"] if entry["network"] == network)


# ----------------------------------------------------------------------------- service


def test_the_environments_values_are_the_defaults(admin):
    policy = settings.get_backend_policy(admin)
    assert (policy["denied_networks"], policy["allowed_networks"]) == ([], ENV_ALLOWED)
    assert policy["overridden"] == []
    assert policy["environment"] == {"denied_networks": [], "allowed_networks": ENV_ALLOWED}


def test_the_policy_in_force_lists_what_is_always_denied_and_what_opens_it(admin):
    factories.make_node("edge-1", host="10.20.30.40")
    policy = settings.update_backend_policy(admin, {
        "denied_networks": ["192.168.0.0/16"],
        "allowed_networks": ["127.0.0.0/8", "169.254.0.0/16", "192.168.7.0/24"]})
    assert effective(policy, "127.0.0.0/8") == {
        "network": "127.0.0.0/8", "reason": "loopback", "state": "allowed",
        "allowed_by": ["127.0.0.0/8"]}
    assert effective(policy, "::1/128")["state"] == "denied"
    assert effective(policy, "169.254.0.0/16")["state"] == "allowed"
    # A metadata address is opened only by an entry naming it alone.
    assert effective(policy, "169.254.169.254")["state"] == "denied"
    assert effective(policy, "192.168.0.0/16") == {
        "network": "192.168.0.0/16", "reason": "denied here", "state": "partly_allowed",
        "allowed_by": ["192.168.7.0/24"]}
    assert effective(policy, "10.20.30.40/32")["reason"] == "a node's address"
    assert {"0.0.0.0/8", "fe80::/10", "fd00:ec2::254"} <= {e["network"]
                                                           for e in policy["effective"]}


@pytest.mark.parametrize("entry,message", [
    ("10.0.0.300/8", "'10.0.0.300/8' is not an IP network"),
    ("10.0.0.1/8", "'10.0.0.1/8' has host bits set: did you mean 10.0.0.0/8?"),
    ("10.0.0.0/33", "'10.0.0.0/33' is not an IP network"),
    ("example.com", "'example.com' is not an IP network"),
    ("", "'' is not an IP network"),
    (7, "'7' is not an IP network"),
])
def test_a_bad_cidr_is_a_field_error_naming_the_entry(admin, entry, message):
    with pytest.raises(ValidationError) as caught:
        settings.update_backend_policy(admin, {"allowed_networks": ["10.1.0.0/16", entry]})
    assert caught.value.fields == {"allowed_networks": caught.value.fields["allowed_networks"]}
    assert message in caught.value.fields["allowed_networks"]
    assert _db.session.get(Setting, "backend_allowed_networks") is None


def test_a_change_is_audited_with_the_old_and_new_networks(admin):
    settings.update_backend_policy(admin, {"denied_networks": ["10.0.0.0/8", "10.0.0.0/8"],
                                           "allowed_networks": ENV_ALLOWED})
    [entry] = _db.session.scalars(select(AuditLog).where(
        AuditLog.action == "settings.backend_policy")).all()
    assert entry.username == "admin"
    # The allowed networks keep their value but no longer follow the environment.
    assert entry.details == {
        "denied_networks": {"old": [], "new": ["10.0.0.0/8"], "from_environment": False},
        "allowed_networks": {"old": ENV_ALLOWED, "new": ENV_ALLOWED,
                             "from_environment": False}}
    settings.update_backend_policy(admin, {"denied_networks": None})
    settings.update_backend_policy(admin, {"denied_networks": None})
    entries = _db.session.scalars(select(AuditLog).where(
        AuditLog.action == "settings.backend_policy")).all()
    assert len(entries) == 2 and entries[-1].details == {
        "denied_networks": {"old": ["10.0.0.0/8"], "new": [], "from_environment": True}}
    assert settings.get_backend_policy(admin)["overridden"] == ["allowed_networks"]


def test_a_client_cannot_read_or_change_the_policy(alice):
    with pytest.raises(Forbidden):
        settings.get_backend_policy(alice)
    with pytest.raises(Forbidden):
        settings.update_backend_policy(alice, {"allowed_networks": ["0.0.0.0/0"]})


# ----------------------------------------------------------------------------- sites


def test_an_allowed_network_lets_a_backend_through_and_removing_it_refuses_it_again(
        client, admin, alice):
    settings.update_backend_policy(admin, {"denied_networks": ["10.0.0.0/8"]})
    status, body = create_site(client, alice, "10.1.2.3", "one.example.com")
    assert status == 422 and "10.0.0.0/8" in body["error"]["fields"]["backends.0.host"]
    settings.update_backend_policy(admin, {"allowed_networks": [*ENV_ALLOWED, "10.1.0.0/16"]})
    assert create_site(client, alice, "10.1.2.3", "one.example.com")[0] == 201
    settings.update_backend_policy(admin, {"allowed_networks": ENV_ALLOWED})
    status, body = create_site(client, alice, "10.1.2.4", "two.example.com")
    assert status == 422 and "backends.0.host" in body["error"]["fields"]


def test_loopback_stays_denied_whatever_the_denied_list_unless_allowed(
        app, client, admin, alice, monkeypatch):
    monkeypatch.setitem(app.config, "BACKEND_DENIED_NETWORKS", "10.0.0.0/8")
    settings.update_backend_policy(admin, {"allowed_networks": []})
    status, body = create_site(client, alice, "127.0.0.1", "loop.example.com")
    assert status == 422 and "127.0.0.0/8" in body["error"]["fields"]["backends.0.host"]
    assert create_site(client, alice, "10.0.0.1", "ten.example.com")[0] == 422
    settings.update_backend_policy(admin, {"allowed_networks": None})  # the environment's
    assert create_site(client, alice, "127.0.0.1", "loop.example.com")[0] == 201


# ----------------------------------------------------------------------------- API


def test_the_api_reads_and_changes_the_policy(client, admin):
    headers = api_headers(admin)
    body = client.get("/api/v1/settings/backend-policy", headers=headers).get_json()
    assert body["allowed_networks"] == ENV_ALLOWED and body["overridden"] == []
    response = client.put("/api/v1/settings/backend-policy", headers=headers,
                          json={"denied_networks": ["2001:db8::/32", "203.0.113.0/24"]})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["denied_networks"] == ["2001:db8::/32", "203.0.113.0/24"]
    assert body["overridden"] == ["denied_networks"]
    assert effective(body, "203.0.113.0/24")["state"] == "denied"


@pytest.mark.parametrize("payload,field", [
    ({"denied_networks": ["10.0.0.0/8", "10.0.0.256/24"]}, "denied_networks"),
    ({"allowed_networks": ["fe80::1/10"]}, "allowed_networks"),
    ({"allowed_networks": "10.0.0.0/8"}, "allowed_networks"),
    ({"blocked_networks": []}, "blocked_networks"),
])
def test_the_api_answers_422_naming_the_field(client, admin, payload, field):
    response = client.put("/api/v1/settings/backend-policy", headers=api_headers(admin),
                          json=payload)
    assert response.status_code == 422
    assert field in response.get_json()["error"]["fields"]
    assert _db.session.scalars(select(Setting)).all() == []


def test_a_client_token_cannot_read_or_change_the_policy(client, alice):
    headers = api_headers(alice)
    assert client.get("/api/v1/settings/backend-policy", headers=headers).status_code == 403
    response = client.put("/api/v1/settings/backend-policy", headers=headers,
                          json={"allowed_networks": ["0.0.0.0/0"]})
    assert response.status_code == 403
    assert _db.session.scalars(select(Setting)).all() == []


# ----------------------------------------------------------------------------- admin page


def _page(response: Any) -> str:
    return html.unescape(response.get_data(as_text=True))


def test_the_settings_page_shows_the_policy_in_force_and_saves_it(admin_client, admin, db):
    page = _page(admin_client.get("/admin/settings"))
    assert "Backend address policy" in page and 'id="backend-policy-effective"' in page
    assert "loopback" in page and "cloud metadata" in page
    response = admin_client.post("/admin/settings/backend-policy", data={
        "policy-denied_networks": "10.0.0.0/8\n172.16.0.0/12, 192.168.0.0/16",
        "policy-allowed_networks": "127.0.0.0/8", "policy-save_policy": "y"})
    assert response.status_code == 302, _page(response)
    policy = settings.get_backend_policy(admin)
    assert policy["denied_networks"] == ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
    assert policy["allowed_networks"] == ["127.0.0.0/8"]
    response = admin_client.post("/admin/settings/backend-policy", data={
        "policy-denied_networks": "", "policy-allowed_networks": "",
        "policy-reset_policy": "y"})
    assert response.status_code == 302
    assert settings.get_backend_policy(admin)["overridden"] == []
    # A list left as it was keeps following the environment.
    admin_client.post("/admin/settings/backend-policy", data={
        "policy-denied_networks": "10.0.0.0/8", "policy-allowed_networks": "127.0.0.0/8\n::1",
        "policy-save_policy": "y"})
    assert settings.get_backend_policy(admin)["overridden"] == ["denied_networks"]


def test_the_settings_page_shows_a_bad_cidr_under_its_field(admin_client, admin):
    response = admin_client.post("/admin/settings/backend-policy", data={
        "policy-denied_networks": "10.0.0.0/8\n10.0.0.300/8",
        "policy-allowed_networks": "127.0.0.0/8", "policy-save_policy": "y"})
    assert response.status_code == 422
    page = _page(response)
    assert 'id="policy-denied_networks-error"' in page
    assert "'10.0.0.300/8' is not an IP network" in page
    assert "10.0.0.0/8\n10.0.0.300/8" in page  # what was typed comes back
    assert settings.get_backend_policy(admin)["overridden"] == []


def test_a_client_cannot_open_the_settings_page(alice_client):
    assert alice_client.get("/admin/settings").status_code == 403
    assert alice_client.post("/admin/settings/backend-policy", data={
        "policy-allowed_networks": "0.0.0.0/0"}).status_code == 403


def test_the_audit_log_shows_the_old_and_new_networks(admin_client, admin):
    settings.update_backend_policy(admin, {"denied_networks": ["10.0.0.0/8", "fd00::/8"]})
    page = re.sub(r"<[^>]+>", "", _page(
        admin_client.get("/admin/audit?action=settings.backend_policy")))
    page = " ".join(page.split())
    assert "denied_networks: none → 10.0.0.0/8, fd00::/8" in page
