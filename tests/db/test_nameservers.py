"""Nameserver settings, the zones' expected nameservers, who may read and check a
site's nameservers, and what a check says when it cannot ask DNS.  The checks
against a real DNS server are in tests/integration/test_nameserver_checks.py."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app.errors import Forbidden, NotFound, ValidationError
from app.extensions import db as _db
from app.extensions import limiter
from app.models import AuditLog, NameserverCheck, SchedulerLease, SslMode, User
from app.models.base import utcnow
from app.services import nameservers, sites
from tests import factories
from tests.conftest import api_headers, login, make_app

NO_RESOLVERS = "no DNS resolvers are configured"


def check_now(actor: User, site_id: int) -> nameservers.SiteNameservers:
    """"Check now", waited for: the site's new results."""
    assert nameservers.request_check(actor, site_id).started
    nameservers.wait_for_check(site_id)
    _db.session.expire_all()
    return nameservers.site_nameservers(actor, site_id)


# --------------------------------------------------------------------- settings


def test_expected_nameservers_and_resolvers_are_stored_in_their_plain_form(admin: User) -> None:
    saved = nameservers.update_settings(admin, {
        "nameservers": ["NS1.Example.NET.", "ns2.example.net", "ns1.example.net"],
        "resolvers": ["127.0.0.1:5300", "[::1]:53", "192.0.2.53"]})
    assert saved["nameservers"] == ["ns1.example.net", "ns2.example.net"]
    assert saved["resolvers"] == ["127.0.0.1:5300", "[::1]", "192.0.2.53"]
    assert saved["overridden"] == ["resolvers"]
    entry = _db.session.scalars(select(AuditLog).where(
        AuditLog.action == "settings.nameservers")).one()
    assert entry.details["nameservers"]["new"] == ["ns1.example.net", "ns2.example.net"]


def test_resolvers_follow_the_environment_until_set_and_again_after_null(
        app: Flask, admin: User, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(app.config, "DNS_RESOLVERS", "192.0.2.1, 192.0.2.2:5353")
    assert nameservers.get_settings(admin)["resolvers"] == ["192.0.2.1", "192.0.2.2:5353"]
    assert nameservers.update_settings(admin, {"resolvers": []})["resolvers"] == []
    back = nameservers.update_settings(admin, {"resolvers": None})
    assert back["resolvers"] == ["192.0.2.1", "192.0.2.2:5353"] and back["overridden"] == []


@pytest.mark.parametrize(("data", "field", "message"), [
    ({"nameservers": ["ns_1.example.net"]}, "nameservers",
     "'ns_1.example.net' is not a valid domain name"),
    ({"nameservers": ["192.0.2.1"]}, "nameservers",
     "'192.0.2.1' is an address: NS records name hosts"),
    ({"nameservers": ["*.example.net"]}, "nameservers", "wildcards are not allowed"),
    ({"nameservers": ["ns1"]}, "nameservers", "must be a fully qualified name"),
    ({"nameservers": "ns1.example.net"}, "nameservers", "must be a list of nameserver names"),
    ({"nameservers": [""]}, "nameservers", "each nameserver must be a name"),
    ({"nameservers": [f"ns{n}.example.net" for n in range(21)]}, "nameservers", "at most 20"),
    ({"resolvers": ["dns.example.net"]}, "resolvers", "'dns.example.net' is not an IP address"),
    ({"resolvers": ["127.0.0.1:99999"]}, "resolvers", "has a port that is not a number"),
    ({"resolvers": "127.0.0.1"}, "resolvers", "must be a list of addresses"),
    ({"resolvers": [53]}, "resolvers", "each resolver must be text"),
    ({"nameserver": []}, "nameserver", "unknown field"),
])
def test_bad_settings_are_refused_field_by_field(admin: User, data: dict[str, Any],
                                                 field: str, message: str) -> None:
    with pytest.raises(ValidationError) as refused:
        nameservers.update_settings(admin, data)
    assert message in refused.value.fields[field]
    assert nameservers.get_settings(admin)["nameservers"] == []


def test_settings_are_the_administrators(alice: User, client: FlaskClient) -> None:
    with pytest.raises(Forbidden):
        nameservers.get_settings(alice)
    with pytest.raises(Forbidden):
        nameservers.update_settings(alice, {"nameservers": ["ns1.example.net"]})
    answer = client.put("/api/v1/settings/nameservers", json={"nameservers": []},
                        headers=api_headers(alice))
    assert answer.status_code == 403


def test_the_settings_api_answers_422_with_the_field(admin: User, client: FlaskClient) -> None:
    headers = api_headers(admin)
    answer = client.put("/api/v1/settings/nameservers", headers=headers,
                        json={"nameservers": ["ns1.example.net", "bad name"]})
    assert answer.status_code == 422
    assert "'bad name' must not contain spaces" in answer.json["error"]["fields"]["nameservers"]
    answer = client.put("/api/v1/settings/nameservers", headers=headers, json={
        "nameservers": ["ns1.example.net"], "resolvers": ["127.0.0.1:5300"]})
    assert answer.status_code == 200, answer.json
    shown = client.get("/api/v1/settings/nameservers", headers=headers).json
    assert shown["nameservers"] == ["ns1.example.net"]
    assert shown["resolvers"] == ["127.0.0.1:5300"] and shown["overridden"] == ["resolvers"]


def test_the_settings_page_saves_and_refuses_with_field_messages(
        admin: User, admin_client: FlaskClient) -> None:
    page = admin_client.get("/admin/settings").get_data(as_text=True)
    assert 'id="nameservers"' in page and "No DNS resolvers are configured" in page
    refused = admin_client.post("/admin/settings/nameservers", data={
        "ns-nameservers": "ns1.example.net\nns_2.example.net", "ns-resolvers": "nowhere",
        "ns-save_nameservers": "1"})
    assert refused.status_code == 422
    text = refused.get_data(as_text=True)
    assert "&#39;nowhere&#39; is not an IP address" in text
    assert "&#39;ns_2.example.net&#39; is not a valid domain name" in text
    saved = admin_client.post("/admin/settings/nameservers", data={
        "ns-nameservers": "ns1.example.net, ns2.example.net", "ns-resolvers": "127.0.0.1:5300",
        "ns-save_nameservers": "1"})
    assert saved.status_code == 302
    current = nameservers.get_settings(admin)
    assert current["nameservers"] == ["ns1.example.net", "ns2.example.net"]
    assert current["resolvers"] == ["127.0.0.1:5300"]
    # Saving the expected list again leaves the resolvers set; a reset gives them back
    # to the environment.
    admin_client.post("/admin/settings/nameservers", data={
        "ns-nameservers": "ns1.example.net", "ns-resolvers": "127.0.0.1:5300",
        "ns-save_nameservers": "1"})
    assert nameservers.get_settings(admin)["overridden"] == ["resolvers"]
    admin_client.post("/admin/settings/nameservers", data={"ns-reset_resolvers": "1"})
    assert nameservers.get_settings(admin)["overridden"] == []


# ------------------------------------------------------------------------- zones


def test_zones_are_created_changed_and_deleted_with_unique_names(admin: User) -> None:
    zone = nameservers.create_zone(admin, {"zone": "Example.COM",
                                           "nameservers": ["ns1.example.com."]})
    assert (zone.zone, zone.nameservers) == ("example.com", ["ns1.example.com"])
    with pytest.raises(ValidationError) as taken:
        nameservers.create_zone(admin, {"zone": "example.com", "nameservers": ["ns9.x.net"]})
    assert taken.value.fields == {"zone": "already has expected nameservers: change that "
                                          "zone instead"}
    nameservers.update_zone(admin, zone.id, {"nameservers": ["ns2.example.com"]})
    assert nameservers.get_zone(admin, zone.id).nameservers == ["ns2.example.com"]
    nameservers.delete_zone(admin, zone.id)
    with pytest.raises(NotFound):
        nameservers.get_zone(admin, zone.id)
    actions = [e.action for e in _db.session.scalars(select(AuditLog).where(
        AuditLog.object_type == "nameserver_zone").order_by(AuditLog.id))]
    assert actions == ["nameserver_zone.create", "nameserver_zone.update",
                       "nameserver_zone.delete"]


@pytest.mark.parametrize(("data", "fields"), [
    ({"zone": "", "nameservers": ["ns1.example.com"]}, {"zone": "is required"}),
    ({"zone": "exa mple.com", "nameservers": ["ns1.example.com"]},
     {"zone": "must not contain spaces"}),
    ({"zone": "example.com", "nameservers": []},
     {"nameservers": "list at least one nameserver, such as ns1.example.net"}),
    ({"zone": "example.com"}, {"nameservers": "must be a list of nameserver names such as "
                                              "ns1.example.net"}),
    ({"zone": "example.com", "nameservers": ["ns1.example.com"], "ttl": 5},
     {"ttl": "unknown field"}),
])
def test_bad_zones_are_refused_field_by_field(admin: User, data: dict[str, Any],
                                              fields: dict[str, str]) -> None:
    with pytest.raises(ValidationError) as refused:
        nameservers.create_zone(admin, data)
    assert refused.value.fields == fields


def test_zones_through_the_api(admin: User, alice: User, client: FlaskClient) -> None:
    headers = api_headers(admin)
    created = client.post("/api/v1/nameserver-zones", headers=headers, json={
        "zone": "example.org", "nameservers": ["ns1.example.org", "ns2.example.org"]})
    assert created.status_code == 201, created.json
    zone_id = created.json["id"]
    assert created.json["nameservers"] == ["ns1.example.org", "ns2.example.org"]
    refused = client.post("/api/v1/nameserver-zones", headers=headers,
                          json={"zone": "example.net", "nameservers": ["ns1..example.net"]})
    assert refused.status_code == 422
    assert "nameservers" in refused.json["error"]["fields"]
    changed = client.patch(f"/api/v1/nameserver-zones/{zone_id}", headers=headers,
                           json={"nameservers": ["ns3.example.org"]})
    assert changed.json["nameservers"] == ["ns3.example.org"]
    listed = client.get("/api/v1/nameserver-zones", headers=headers).json
    assert [item["zone"] for item in listed["items"]] == ["example.org"]
    assert listed["total"] == 1
    assert client.get("/api/v1/nameserver-zones", headers=api_headers(alice)).status_code == 403
    assert client.delete(f"/api/v1/nameserver-zones/{zone_id}",
                         headers=headers).status_code == 204
    assert client.get(f"/api/v1/nameserver-zones/{zone_id}",
                      headers=headers).status_code == 404


def test_zone_pages_add_change_and_delete(admin: User, admin_client: FlaskClient) -> None:
    refused = admin_client.post("/admin/nameservers/zones/new", data={
        "zone": "example.com", "nameservers": "ns1.example.com\n10.0.0.1"})
    assert refused.status_code == 422
    assert "is an address: NS records name hosts" in refused.get_data(as_text=True)
    assert admin_client.post("/admin/nameservers/zones/new", data={
        "zone": "example.com", "nameservers": "ns1.example.com\nns2.example.com"}
    ).status_code == 302
    zone = nameservers.list_zones(admin).items[0]
    listed = admin_client.get("/admin/nameservers/zones").get_data(as_text=True)
    assert "ns1.example.com, ns2.example.com" in listed
    assert admin_client.post(f"/admin/nameservers/zones/{zone.id}/edit", data={
        "zone": "example.com", "nameservers": "ns3.example.com"}).status_code == 302
    assert nameservers.get_zone(admin, zone.id).nameservers == ["ns3.example.com"]
    admin_client.post(f"/admin/nameservers/zones/{zone.id}/delete")
    assert nameservers.list_zones(admin).total == 0


def test_clients_cannot_reach_the_zone_pages(alice_client: FlaskClient) -> None:
    assert alice_client.get("/admin/nameservers/zones").status_code == 403
    assert alice_client.post("/admin/nameservers/zones/new", data={
        "zone": "example.com", "nameservers": "ns1.example.com"}).status_code == 403


# ------------------------------------------------------------------ site checks


def test_a_check_without_resolvers_says_so_for_every_name(alice: User) -> None:
    site = factories.make_site(alice, "shop.example.com", aliases=["www.shop.example.com"])
    result = check_now(alice, site.id)
    assert result.status == "error"
    assert [check.hostname for check in result.checks] == ["shop.example.com",
                                                            "www.shop.example.com"]
    assert all(check.error.startswith(NO_RESOLVERS) for check in result.checks)


def test_environment_resolvers_that_are_not_addresses_are_named_as_the_reason(
        app: Flask, admin: User, alice: User, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(app.config, "DNS_RESOLVERS", "resolver.example.net")
    assert nameservers.get_settings(admin)["resolver_problem"].startswith(
        "DNS_RESOLVERS is not a list of addresses: 'resolver.example.net'")
    site = factories.make_site(alice, "shop.example.com")
    check = check_now(alice, site.id).checks[0]
    assert check.error.startswith("DNS_RESOLVERS is not a list of addresses")
    with pytest.raises(ValueError, match="DNS_RESOLVERS is not a list of addresses"):
        nameservers.check_all()


def test_the_job_does_nothing_until_resolvers_and_expectations_are_set(
        admin: User, alice: User) -> None:
    factories.make_site(alice, "shop.example.com")
    assert nameservers.check_all().startswith("no DNS resolvers are configured")
    # A resolver nobody listens on: it is never asked, for nothing is expected yet.
    nameservers.update_settings(admin, {"resolvers": ["127.0.0.1:9"]})
    assert nameservers.check_all().startswith("no nameservers are expected")
    assert _db.session.scalars(select(NameserverCheck)).all() == []


def test_names_a_site_no_longer_has_leave_its_results(alice: User) -> None:
    site = factories.make_site(alice, "shop.example.com", aliases=["old.example.com"])
    check_now(alice, site.id)
    sites.update_site(alice, site.id, {"aliases": ["new.example.com"]})
    assert [c.hostname for c in nameservers.site_nameservers(alice, site.id).checks] == [
        "shop.example.com"]
    check_now(alice, site.id)
    stored = _db.session.scalars(select(NameserverCheck.hostname).where(
        NameserverCheck.site_id == site.id)).all()
    assert sorted(stored) == ["new.example.com", "shop.example.com"]


def test_client_cannot_read_or_check_other_clients_nameservers(
        alice: User, bob: User, client: FlaskClient, app: Flask) -> None:
    site = factories.make_site(alice, "shop.example.com")
    check_now(alice, site.id)
    with pytest.raises(NotFound):
        nameservers.site_nameservers(bob, site.id)
    with pytest.raises(NotFound):
        nameservers.request_check(bob, site.id)
    bob_headers = api_headers(bob)
    for answer in (client.get(f"/api/v1/sites/{site.id}/nameservers", headers=bob_headers),
                   client.post(f"/api/v1/sites/{site.id}/nameservers/check",
                               headers=bob_headers)):
        assert answer.status_code == 404
        assert "shop.example.com" not in answer.get_data(as_text=True)
    bob_browser = app.test_client()
    login(bob_browser, bob)
    assert bob_browser.post(f"/client/sites/{site.id}/nameservers/check").status_code == 404
    assert bob_browser.get(f"/client/sites/{site.id}").status_code == 404
    # The owner and the administrators read it.
    mine = client.get(f"/api/v1/sites/{site.id}/nameservers", headers=api_headers(alice))
    assert mine.status_code == 200 and mine.json["status"] == "error"
    assert mine.json["checks"][0]["hostname"] == "shop.example.com"


def test_the_api_checks_a_site_now_in_the_background(
        alice: User, admin: User, client: FlaskClient) -> None:
    site = factories.make_site(alice, "shop.example.com")
    before = client.get(f"/api/v1/sites/{site.id}/nameservers", headers=api_headers(alice))
    assert before.json == {"site_id": site.id, "status": "unchecked", "checked_at": None,
                           "checking_since": None, "checks": []}
    started = client.post(f"/api/v1/sites/{site.id}/nameservers/check",
                          headers=api_headers(admin))
    assert started.status_code == 202
    assert started.json["site_id"] == site.id
    nameservers.wait_for_check(site.id)
    checked = client.get(f"/api/v1/sites/{site.id}/nameservers", headers=api_headers(alice))
    assert checked.json["checking_since"] is None
    check = checked.json["checks"][0]
    assert check["status"] == "error" and check["error"].startswith(NO_RESOLVERS)
    assert checked.json["checked_at"] == check["checked_at"]


def _hold_check_lease(site_id: int, *, expired: bool = False) -> None:
    """The lease another app instance holds while it checks the site (or held, and
    died: ``expired``)."""
    now = utcnow()
    _db.session.add(SchedulerLease(
        name=f"{nameservers.CHECK_WORK}:{site_id}", holder="another-instance",
        heartbeat_at=now - timedelta(minutes=1),
        expires_at=now + timedelta(minutes=-1 if expired else 5)))
    _db.session.commit()


def test_a_check_running_on_another_instance_is_joined_not_repeated(
        alice: User, alice_client: FlaskClient) -> None:
    site = factories.make_site(alice, "shop.example.com")
    _hold_check_lease(site.id)
    requested = nameservers.request_check(alice, site.id)
    assert not requested.started
    assert requested.nameservers.running_since is not None
    page = alice_client.post(f"/client/sites/{site.id}/nameservers/check",
                             follow_redirects=True).get_data(as_text=True)
    assert "A nameserver check of this site is already running" in page
    assert 'id="nameservers" data-live="2"' in page and "Checking now (started" in page
    nameservers.wait_for_check(site.id)
    assert _db.session.scalars(select(NameserverCheck)).all() == []


def test_the_lease_of_a_check_whose_process_died_is_taken_over(alice: User) -> None:
    site = factories.make_site(alice, "shop.example.com")
    _hold_check_lease(site.id, expired=True)
    assert check_now(alice, site.id).status == "error"
    # The check gave its lease back when it ended: the site's next click starts one.
    assert check_now(alice, site.id).running_since is None


def test_checks_now_are_limited_per_user(app: Flask, db: Any, alice: User, bob: User) -> None:
    limited = make_app(RATELIMIT_ENABLED=True, NAMESERVER_CHECK_LIMIT="2 per hour",
                       ENCRYPTION_KEYS=app.config["ENCRYPTION_KEYS"])
    try:
        mine = factories.make_site(alice, "shop.example.com")
        theirs = factories.make_site(bob, "other.example.com")
        client = limited.test_client()
        statuses = []
        for _ in range(3):
            statuses.append(client.post(f"/api/v1/sites/{mine.id}/nameservers/check",
                                        headers=api_headers(alice)).status_code)
            with limited.app_context():
                nameservers.wait_for_check(mine.id)
        assert statuses == [202, 202, 429]
        browser = limited.test_client()
        login(browser, alice)
        assert browser.post(f"/client/sites/{mine.id}/nameservers/check").status_code == 429
        # Another user's clicks are counted apart.
        assert client.post(f"/api/v1/sites/{theirs.id}/nameservers/check",
                           headers=api_headers(bob)).status_code == 202
        with limited.app_context():
            nameservers.wait_for_check(theirs.id)
    finally:
        limiter.init_app(app)


def test_the_site_page_shows_the_owner_the_nameserver_status(
        alice: User, alice_client: FlaskClient) -> None:
    site = factories.make_site(alice, "shop.example.com")
    page = alice_client.get(f"/client/sites/{site.id}").get_data(as_text=True)
    assert 'data-ns-status="unchecked"' in page and "Not checked yet." in page
    answer = alice_client.post(f"/client/sites/{site.id}/nameservers/check")
    assert answer.status_code == 302
    assert answer.headers["Location"].endswith(f"/client/sites/{site.id}#nameservers")
    nameservers.wait_for_check(site.id)
    page = alice_client.get(f"/client/sites/{site.id}").get_data(as_text=True)
    assert "Nameserver check started: the results appear below when it ends." in page
    assert 'data-ns-status="error"' in page and NO_RESOLVERS in page


# ------------------------------------------------------------ the ACME pre-check


def test_orders_say_the_pre_check_is_skipped_without_resolvers(
        admin: User, alice: User, client: FlaskClient, alice_client: FlaskClient) -> None:
    factories.make_node()
    site = factories.make_site(alice, "shop.example.com", ssl_mode=SslMode.LETSENCRYPT.value)
    answer = client.get(f"/api/v1/sites/{site.id}/certificate", headers=api_headers(alice))
    assert answer.json["precheck"]["state"] == "skipped"
    assert answer.json["precheck"]["message"].startswith(
        "Skipped: no DNS resolvers are configured")
    assert "Settings, Nameservers, or with DNS_RESOLVERS" in answer.json["precheck"]["message"]
    page = alice_client.get(f"/client/sites/{site.id}").get_data(as_text=True)
    assert 'data-precheck="skipped"' in page

    nameservers.update_settings(admin, {"resolvers": ["127.0.0.1:5300"]})
    answer = client.get(f"/api/v1/sites/{site.id}/certificate", headers=api_headers(alice))
    assert answer.json["precheck"]["state"] == "on"


def test_the_pre_check_does_not_concern_other_certificates(alice: User,
                                                           client: FlaskClient) -> None:
    site = factories.make_site(alice, "shop.example.com", ssl_mode=SslMode.SELF_SIGNED.value)
    answer = client.get(f"/api/v1/sites/{site.id}/certificate", headers=api_headers(alice))
    assert answer.json["precheck"] == {"state": "not_applicable", "message": ""}
