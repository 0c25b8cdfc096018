"""A client deploys a site, the site checks run, and the site's page shows its uptime,
its last check through the pool's node (named "node 1 of 1", never by the fleet's
name) and its charts, over the range the client picks."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.e2e.conftest import SHARED_NODE_ADDRESS, SHARED_POOL, api, make_client, sign_in
from tests.nginx_node import Backend


def test_a_client_sees_the_uptime_of_their_site(journey_factory, product, shared_pool):
    password = make_client(product, "ulla")
    token = api(product, "POST", "/tokens", {"username": "ulla", "password": password,
                                             "name": "setup"})["token"]
    backend = Backend("uptime")
    try:
        site = api(product, "POST", "/sites", {
            "domain": "uptime.example.test", "pool": SHARED_POOL,
            "backends": [{"host": "127.0.0.1", "port": backend.port, "weight": 1}]}, token)
        journey = journey_factory()
        page = journey.go(f"/client/sites/{site['id']}")
        sign_in(journey, "ulla", password)
        card = page.locator("#uptime")
        expect(card.locator("[data-uptime-window='24h']")).to_have_text("no checks")
        expect(card.locator("[data-uptime-status]")).to_have_text("not checked")

        page.get_by_role("button", name="Deploy now").click()
        expect(page.locator("#deployment-summary")).to_have_text("deployed on 1 of 1 node",
                                                                 timeout=30_000)
        # What the scheduler does every minute, run now.
        assert product.cli("jobs", "run", "site_checks").startswith("site_checks: succeeded")
        page.get_by_role("link", name="uptime.example.test").first.click()

        expect(card.locator("[data-uptime-window='24h']")).to_contain_text("100.00")
        node = card.get_by_role("row").filter(has_text="node 1 of 1")
        expect(node.locator("[data-uptime-status]")).to_have_text("up")
        expect(node).to_contain_text("HTTP 200")
        expect(card.get_by_role("img", name=re.compile(r"^Uptime over 24 hours"))).to_be_visible()
        expect(card.get_by_role("img", name=re.compile(r"^Response time over 24 hours"))
               ).to_be_visible()
        for secret in ("shared-1", SHARED_NODE_ADDRESS):
            expect(card).not_to_contain_text(secret)
        journey.check("site uptime, client")

        card.get_by_role("link", name="7 days").click()
        expect(card.get_by_role("link", name="7 days")).to_have_attribute("aria-current", "page")
        expect(card.get_by_role("img", name=re.compile(r"^Uptime over 7 days"))).to_be_visible()
        journey.check("site uptime over 7 days, client")
    finally:
        backend.stop()
