"""Nameserver checks against a real Knot DNS on loopback: the zones' NS records as
Knot serves them (changed by RFC 2136 updates, as an operator's DNS would change),
compared with what the administrators expect; and the ACME pre-check, which now runs
whenever DNS resolvers are configured."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.extensions import db as _db
from app.models import NameserverStatus, SslMode, User
from app.services import certificates, nameservers
from app.services.certificates import AcmeIssueError, AcmeSettings
from tests import factories
from tests.conftest import api_headers
from tests.knot import ADDRESS, HeldRelay, KnotServer
from tests.processes import free_port

ZONES = ("ok.example.com", "moved.example.com", "ranked.example.com",
         "sub.ranked.example.com", "gone.example.com", "precheck.example.com")
NODE_ADDRESS = "127.0.0.71"


@pytest.fixture(scope="module")
def knot() -> Iterator[KnotServer]:
    server = KnotServer(ZONES)
    yield server
    server.stop()


def point(knot: KnotServer, name: str, zone: str, address: str) -> None:
    """``name`` answers A ``address`` (and no other address)."""
    knot.update(zone, replace=((name.removesuffix("." + zone), "A", address),))


def expect(admin: User, knot: KnotServer, names: list[str]) -> None:
    nameservers.update_settings(admin, {"nameservers": names, "resolvers": [knot.address]})


def by_name(result: nameservers.SiteNameservers) -> dict[str, Any]:
    return {check.hostname: check for check in result.checks}


def check_now(actor: User, site_id: int) -> nameservers.SiteNameservers:
    """"Check now", waited for: the site's new results."""
    assert nameservers.request_check(actor, site_id).started
    nameservers.wait_for_check(site_id)
    _db.session.expire_all()
    return nameservers.site_nameservers(actor, site_id)


def test_a_site_whose_zone_has_the_expected_nameservers_is_ok(
        admin: User, alice: User, knot: KnotServer, alice_client: FlaskClient) -> None:
    point(knot, "www.ok.example.com", "ok.example.com", ADDRESS)
    expect(admin, knot, ["ns1.ok.example.com"])
    site = factories.make_site(alice, "www.ok.example.com", aliases=["ok.example.com"])

    result = check_now(alice, site.id)

    assert result.status == "ok"
    for check in result.checks:
        assert (check.zone, check.status, check.found, check.expected, check.error) == (
            "ok.example.com", NameserverStatus.OK, ["ns1.ok.example.com"],
            ["ns1.ok.example.com"], "")
    page = alice_client.get(f"/client/sites/{site.id}").get_data(as_text=True)
    assert 'data-ns-status="ok"' in page


def test_nameservers_changed_in_the_zone_are_a_mismatch_until_expected(
        admin: User, alice: User, knot: KnotServer, admin_client: FlaskClient) -> None:
    point(knot, "www.moved.example.com", "moved.example.com", ADDRESS)
    expect(admin, knot, ["ns1.moved.example.com"])
    site = factories.make_site(alice, "www.moved.example.com")
    assert check_now(alice, site.id).status == "ok"

    knot.update("moved.example.com", add=(("@", "NS", "ns9.other.example.net."),),
                delete=(("@", "NS", "ns1.moved.example.com."),))
    summary = nameservers.check_all()

    assert summary == "1 name(s) of 1 site(s) checked: 0 ok, 1 mismatched, 0 could not be checked"
    check = nameservers.site_nameservers(alice, site.id).checks[0]
    assert check.status == NameserverStatus.MISMATCH
    assert check.found == ["ns9.other.example.net"]
    assert check.error == ("zone moved.example.com is served by ns9.other.example.net "
                           "(missing ns1.moved.example.com; not expected ns9.other.example.net)")
    dashboard = admin_client.get("/admin/").get_data(as_text=True)
    assert f'href="/admin/sites/{site.id}#nameservers">www.moved.example.com</a>' in dashboard
    assert 'data-figure="nameserver mismatches">1<' in dashboard

    # The administrators follow the move: the zone is as expected again.
    nameservers.update_settings(admin, {"nameservers": ["ns9.other.example.net"]})
    admin_client.post(f"/admin/sites/{site.id}/nameservers/check")
    nameservers.wait_for_check(site.id)
    _db.session.expire_all()
    assert nameservers.site_nameservers(admin, site.id).status == "ok"
    assert nameservers.mismatched_sites(admin).total == 0


def test_a_zones_own_list_outranks_the_global_one(admin: User, alice: User,
                                                  knot: KnotServer) -> None:
    point(knot, "www.ranked.example.com", "ranked.example.com", ADDRESS)
    point(knot, "api.sub.ranked.example.com", "sub.ranked.example.com", ADDRESS)
    point(knot, "www.ok.example.com", "ok.example.com", ADDRESS)
    expect(admin, knot, ["ns1.elsewhere.example.net"])
    nameservers.create_zone(admin, {"zone": "ranked.example.com",
                                    "nameservers": ["ns1.ranked.example.com"]})
    site = factories.make_site(alice, "www.ranked.example.com",
                               aliases=["api.sub.ranked.example.com", "www.ok.example.com"])

    checks = by_name(check_now(alice, site.id))

    assert checks["www.ranked.example.com"].status == NameserverStatus.OK
    # A zone under a configured one is held to that list (the longest configured zone).
    sub = checks["api.sub.ranked.example.com"]
    assert (sub.zone, sub.status) == ("sub.ranked.example.com", NameserverStatus.MISMATCH)
    assert sub.expected == ["ns1.ranked.example.com"]
    # Zones without a list of their own are held to the global one.
    other = checks["www.ok.example.com"]
    assert (other.status, other.expected) == (NameserverStatus.MISMATCH,
                                              ["ns1.elsewhere.example.net"])

    nameservers.create_zone(admin, {"zone": "sub.ranked.example.com",
                                    "nameservers": ["ns1.sub.ranked.example.com"]})
    checks = by_name(check_now(alice, site.id))
    assert checks["api.sub.ranked.example.com"].status == NameserverStatus.OK


def test_a_name_that_does_not_exist_is_an_error_saying_nxdomain(
        admin: User, alice: User, knot: KnotServer) -> None:
    expect(admin, knot, ["ns1.gone.example.com"])
    site = factories.make_site(alice, "missing.gone.example.com")

    check = check_now(alice, site.id).checks[0]

    assert check.status == NameserverStatus.ERROR
    assert check.error == ("missing.gone.example.com does not exist in zone gone.example.com "
                           "(NXDOMAIN): add a record for it there")
    assert (check.zone, check.found) == ("gone.example.com", ["ns1.gone.example.com"])


def test_a_zone_the_resolvers_refuse_is_an_error_saying_what_they_answered(
        admin: User, alice: User, knot: KnotServer) -> None:
    expect(admin, knot, ["ns1.example.org"])
    site = factories.make_site(alice, "shop.example.org")

    check = check_now(alice, site.id).checks[0]

    assert check.status == NameserverStatus.ERROR
    assert check.error == ("the DNS resolvers could not answer for shop.example.org: "
                           "they said REFUSED")
    assert knot.address not in check.error


def test_check_now_answers_at_once_and_a_second_click_joins_the_running_check(
        app: Flask, admin: User, alice: User, knot: KnotServer, client: FlaskClient,
        alice_client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """The resolvers hold the check's first query for as long as the test likes: the
    requests answer meanwhile, the page says a check runs and refreshes itself, and
    asking again (the page, the API) starts no second check; let through, the one
    check asks each of its questions once and its results replace the old ones."""
    monkeypatch.setitem(app.config, "DNS_TIMEOUT", 30.0)  # the held query must wait
    relay = HeldRelay((knot.host, knot.port))
    try:
        point(knot, "www.ok.example.com", "ok.example.com", ADDRESS)
        nameservers.update_settings(admin, {"nameservers": ["ns1.ok.example.com"],
                                            "resolvers": [relay.address]})
        site = factories.make_site(alice, "www.ok.example.com")

        clicked = alice_client.post(f"/client/sites/{site.id}/nameservers/check")
        assert clicked.status_code == 302
        assert relay.asked.wait(30)
        page = alice_client.get(f"/client/sites/{site.id}").get_data(as_text=True)
        assert "Nameserver check started" in page
        assert 'id="nameservers" data-live="2"' in page and "Checking now" in page
        assert 'data-ns-status="unchecked"' in page

        again = alice_client.post(f"/client/sites/{site.id}/nameservers/check",
                                  follow_redirects=True).get_data(as_text=True)
        assert "A nameserver check of this site is already running" in again
        answer = client.post(f"/api/v1/sites/{site.id}/nameservers/check",
                             headers=api_headers(admin))
        assert answer.status_code == 202
        assert answer.json["checking_since"] is not None and answer.json["checks"] == []
        assert not nameservers.request_check(admin, site.id).started

        relay.release()
        nameservers.wait_for_check(site.id)
        # www.ok.example.com is no zone, ok.example.com is: two questions, asked once.
        assert relay.queries == 2
        done = client.get(f"/api/v1/sites/{site.id}/nameservers", headers=api_headers(alice))
        assert (done.json["status"], done.json["checking_since"]) == ("ok", None)
        page = alice_client.get(f"/client/sites/{site.id}").get_data(as_text=True)
        assert "data-live" not in page.split('id="nameservers"')[1].split(">")[0]
        assert 'data-ns-status="ok"' in page and "Checking now" not in page
        # The check is over: the next click starts another.
        assert check_now(alice, site.id).status == "ok"
    finally:
        relay.release()
        relay.stop()


def test_a_silent_resolver_is_an_error_saying_it_did_not_answer(
        app: Flask, admin: User, alice: User, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(app.config, "DNS_TIMEOUT", 1.0)
    silent = f"{ADDRESS}:{free_port(ADDRESS)}"
    nameservers.update_settings(admin, {"nameservers": ["ns1.ok.example.com"],
                                        "resolvers": [silent]})
    site = factories.make_site(alice, "www.ok.example.com",
                               aliases=[f"n{n}.ok.example.com" for n in range(5)])

    summary = nameservers.check_all()

    assert summary == "6 name(s) of 1 site(s) checked: 0 ok, 0 mismatched, 6 could not be checked"
    # Every name says why, without the resolver's address.
    rows = nameservers.site_nameservers(alice, site.id).checks
    assert {row.error for row in rows} == {"the DNS resolvers did not answer within 1 s (timeout)"}


# ------------------------------------------------------------ the ACME pre-check


@pytest.fixture()
def precheck_site(alice: User) -> Any:
    factories.make_node(host=NODE_ADDRESS)
    return factories.make_site(alice, "www.precheck.example.com",
                               ssl_mode=SslMode.LETSENCRYPT.value)


def nowhere_ca() -> AcmeSettings:
    """A CA nobody listens for: an order that passed the pre-check fails there."""
    return AcmeSettings(directory_url=f"https://{ADDRESS}:{free_port(ADDRESS)}/dir",
                        email="", ca_bundle=None)


def test_the_acme_pre_check_runs_with_the_dns_resolvers_by_default(
        app: Flask, admin: User, precheck_site: Any, knot: KnotServer) -> None:
    assert not app.config["ACME_PRECHECK_RESOLVERS"]
    nameservers.update_settings(admin, {"resolvers": [knot.address]})
    point(knot, "www.precheck.example.com", "precheck.example.com", "127.0.0.98")

    with pytest.raises(AcmeIssueError) as refused:
        certificates.issue(precheck_site.id, nowhere_ca())
    assert refused.value.code == "dns_not_pointing"
    assert str(refused.value).startswith("www.precheck.example.com resolves to 127.0.0.98, "
                                         "which is not one of the site's proxy nodes")

    point(knot, "www.precheck.example.com", "precheck.example.com", NODE_ADDRESS)
    with pytest.raises(AcmeIssueError) as failed:
        certificates.issue(precheck_site.id, nowhere_ca())
    assert failed.value.code == "ca_unreachable"  # past the pre-check, at the CA


def test_without_resolvers_the_pre_check_is_skipped_and_says_so(
        admin: User, alice: User, precheck_site: Any, knot: KnotServer,
        client: FlaskClient) -> None:
    point(knot, "www.precheck.example.com", "precheck.example.com", "127.0.0.98")

    with pytest.raises(AcmeIssueError) as failed:
        certificates.issue(precheck_site.id, nowhere_ca())
    assert failed.value.code == "ca_unreachable"

    shown = client.get(f"/api/v1/sites/{precheck_site.id}/certificate",
                       headers=api_headers(alice)).json["precheck"]
    assert shown["state"] == "skipped"
    assert "no DNS resolvers are configured" in shown["message"]
