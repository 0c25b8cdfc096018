"""Nameservers in a real browser: an administrator sets the expected nameservers and
the DNS resolvers on the Settings page (a bad entry refused under its field), checks a
site whose zone, served by a real Knot, is delegated elsewhere, gives the zone its own
list on the zone page and sees the site as expected; its owner sees the site's status
and checks it again, which runs in the background (the page says so while the DNS
answer is held back, and shows the results by itself when they come), and cannot open
another client's site."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import admin_token, api, make_client, sign_in
from tests.knot import HeldRelay, KnotServer

ZONE = "journey.example.com"


@pytest.fixture(scope="module")
def knot() -> Iterator[KnotServer]:
    server = KnotServer((ZONE,))
    yield server
    server.stop()


def add_site(product, username: str, password: str, domain: str) -> int:
    token = api(product, "POST", "/tokens", {"username": username, "password": password,
                                            "name": "setup"})["token"]
    site = api(product, "POST", "/sites", {
        "domain": domain, "backends": [{"host": "127.0.0.1", "port": 8080, "weight": 1}]},
        token)
    return int(site["id"])


def test_an_administrator_sets_expected_nameservers_and_a_client_sees_their_site(
        journey_factory, product, knot: KnotServer):
    knot.update(ZONE, replace=(("www", "A", "127.0.0.1"), ("shop", "A", "127.0.0.1")))
    password = make_client(product, "nadia")
    site_id = add_site(product, "nadia", password, f"www.{ZONE}")
    other_id = add_site(product, "omar", make_client(product, "omar"), f"shop.{ZONE}")
    token = admin_token(product)
    relay = HeldRelay((knot.host, knot.port))
    try:
        admin = journey_factory("admin")
        page = admin.go("/admin/")
        sign_in(admin, "admin", product.admin_password)
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Settings").click()
        expect(page.get_by_role("heading", name="Nameservers")).to_be_visible()
        expect(page.locator("[data-no-resolvers]")).to_contain_text(
            "No DNS resolvers are configured")
        page.get_by_label("Expected nameservers").fill("ns1.elsewhere.example.net\n10.0.0.53")
        page.get_by_label("DNS resolvers").fill(knot.address)
        page.get_by_role("button", name="Save nameserver settings").click()
        summary = page.locator("#error-summary")
        expect(summary).to_be_focused()
        expect(summary).to_contain_text("'10.0.0.53' is an address: NS records name hosts")
        expect(page.get_by_label("Expected nameservers")).to_have_attribute("aria-invalid",
                                                                            "true")
        admin.check("nameserver settings refused")

        page.get_by_label("Expected nameservers").fill("ns1.elsewhere.example.net")
        page.get_by_role("button", name="Save nameserver settings").click()
        expect(page.get_by_role("status").first).to_contain_text("Nameserver settings saved")
        expect(page.get_by_label("DNS resolvers")).to_have_value(knot.address)
        expect(page.locator("[data-no-resolvers]")).to_have_count(0)
        admin.check("nameserver settings saved")

        admin.go(f"/admin/sites/{site_id}")
        card = page.locator("#nameservers")
        expect(card.locator("[data-ns-status]")).to_have_text("unchecked")
        card.get_by_role("button", name="Check nameservers now").click()
        expect(card.locator("[data-ns-status]")).to_have_text("mismatch")
        expect(card).to_contain_text(f"zone {ZONE} is served by ns1.{ZONE} (missing "
                                     "ns1.elsewhere.example.net")
        admin.check("site served by other nameservers")
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Dashboard").click()
        expect(page.locator("#health")).to_contain_text(f"www.{ZONE}")
        admin.check("dashboard with a nameserver mismatch")

        admin.go(f"/admin/sites/{site_id}")
        page.locator("#nameservers").get_by_role("link", name="zone nameservers").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Zone nameservers")
        page.get_by_role("link", name="Add a zone").click()
        page.get_by_label("Zone").fill(ZONE)
        page.get_by_label("Expected nameservers").fill(f"ns1.{ZONE}")
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_role("status").first).to_contain_text(
            f"Expected nameservers of {ZONE} saved.")
        expect(page.get_by_role("row").filter(has_text=ZONE)).to_contain_text(f"ns1.{ZONE}")
        admin.check("zone nameservers")

        admin.go(f"/admin/sites/{site_id}")
        page.locator("#nameservers").get_by_role("button", name="Check nameservers now").click()
        expect(page.locator("#nameservers [data-ns-status]")).to_have_text("ok")
        admin.check("site served by the expected nameservers")

        client = journey_factory("nadia")
        client_page = client.go("/auth/login")
        sign_in(client, "nadia", password)
        client_page.get_by_role("link", name=f"www.{ZONE}").click()
        card = client_page.locator("#nameservers")
        expect(card.locator("[data-ns-status]")).to_have_text("ok")
        expect(card.get_by_role("row").filter(has_text=f"www.{ZONE}")).to_contain_text(
            f"ns1.{ZONE}")
        # The next check's answers wait at a relay until the journey lets them through.
        api(product, "PUT", "/settings/nameservers", {"resolvers": [relay.address]}, token)
        card.get_by_role("button", name="Check nameservers now").click()
        expect(client_page.get_by_role("status").first).to_contain_text(
            "Nameserver check started: the results appear below when it ends.")
        expect(client_page.locator("#nameservers [data-ns-running]")).to_contain_text(
            "Checking now")
        assert relay.asked.wait(30)
        client.check("client's site while its nameservers are checked")
        card = client_page.locator("#nameservers")
        card.get_by_role("button", name="Check nameservers now").click()
        expect(client_page.get_by_role("status").first).to_contain_text(
            "A nameserver check of this site is already running")
        relay.release()
        # The card takes the results in by itself.
        expect(client_page.locator("#nameservers [data-ns-running]")).to_have_count(0)
        expect(client_page.locator("#nameservers [data-ns-status]")).to_have_text("ok")
        assert relay.queries == 2
        client.check("client's site with its nameservers")

        answer = client_page.goto(f"{product.url}/client/sites/{other_id}")
        assert answer is not None and answer.status == 404
        assert f"shop.{ZONE}" not in client_page.content()
    finally:
        relay.release()
        relay.stop()
        # The other journeys meet the product without resolvers, as it starts.
        api(product, "PUT", "/settings/nameservers", {"nameservers": [], "resolvers": None},
            token)
        for zone in api(product, "GET", "/nameserver-zones", {}, token)["items"]:
            api(product, "DELETE", f"/nameserver-zones/{zone['id']}", {}, token)
