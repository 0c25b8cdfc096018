"""Tenants cannot hurt each other, as an administrator sees it in the browser: the
backend address policy edited on the Settings page (a bad network is refused under
its field, a good one saved and shown in force), and a node's reload command chosen
from the forms its engine knows (the pid-file signal among them), with the change in
the audit log."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.e2e.conftest import admin_token, api, sign_in


def test_an_administrator_edits_the_backend_address_policy(journey_factory, product):
    journey = journey_factory()
    page = journey.go("/admin/")
    sign_in(journey, "admin", product.admin_password)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Settings").click()
    expect(page.get_by_role("heading", name="Backend address policy")).to_be_visible()
    in_force = page.locator("#backend-policy-effective")
    expect(in_force.get_by_role("row").filter(has_text="169.254.169.254")).to_contain_text(
        "cloud metadata")
    # The product lets backends on loopback (the suite's backends live there).
    # (Nodes other journeys added have loopback addresses: their rows say so too.)
    loopback = in_force.locator("tr", has=page.locator(
        "code", has_text=re.compile(r"^127\.0\.0\.0/8$")))
    expect(loopback).to_contain_text("allowed by 127.0.0.0/8")
    journey.check("settings with the backend policy")

    denied = page.get_by_label("Denied networks")
    denied.fill("10.0.0.0/8\n10.0.0.300/8")
    page.get_by_role("button", name="Save backend policy").click()
    summary = page.locator("#error-summary")
    expect(summary).to_be_focused()
    expect(summary).to_contain_text("'10.0.0.300/8' is not an IP network")
    expect(page.get_by_label("Denied networks")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Denied networks")).to_have_value("10.0.0.0/8\n10.0.0.300/8")
    journey.check("backend policy refused")

    summary.get_by_role("link", name="Denied networks").click()
    expect(page.get_by_label("Denied networks")).to_be_focused()
    page.get_by_label("Denied networks").fill("10.0.0.0/8")
    page.get_by_role("button", name="Save backend policy").click()
    expect(page.get_by_role("status").first).to_contain_text("Backend address policy saved")
    expect(page.locator("#backend-policy-effective").get_by_role("row").filter(
        has_text="10.0.0.0/8")).to_contain_text("denied here")
    journey.check("backend policy saved")
    policy = api(product, "GET", "/settings/backend-policy", {}, admin_token(product))
    assert policy["denied_networks"] == ["10.0.0.0/8"]
    assert policy["overridden"] == ["denied_networks"]

    # Back to the environment's values, so the other journeys meet the usual policy.
    page.get_by_role("button", name="Use the environment's values").click()
    expect(page.get_by_role("status").first).to_contain_text("Backend address policy saved")
    expect(page.get_by_label("Denied networks")).to_have_value("")
    assert api(product, "GET", "/settings/backend-policy", {},
               admin_token(product))["overridden"] == []


def test_an_administrator_chooses_a_known_reload_command_for_a_node(journey_factory,
                                                                    product):
    token = admin_token(product)
    api(product, "POST", "/pools", {"name": "commands"}, token)
    node = api(product, "POST", "/nodes", {
        "name": "cmd-1", "host": "192.0.2.41", "ssh_user": "deploy", "pool": "commands",
        "ssh_password": "not-used-here", "enabled": False}, token)
    try:
        journey = journey_factory()
        page = journey.go(f"/admin/nodes/{node['id']}")
        sign_in(journey, "admin", product.admin_password)
        page.get_by_role("link", name="Edit", exact=True).click()
        reload = page.get_by_label("Reload command", exact=True)
        expect(reload).to_have_value("nginx -s reload")
        # Reached as "deploy", not root: the sudo -n forms are offered too.
        expect(reload.locator("option", has_text="sudo -n systemctl reload nginx")).to_have_count(1)
        journey.check("node edit with command choices")

        reload.select_option(label="sudo -n systemctl reload nginx")
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_role("status").first).to_contain_text("Node cmd-1 saved")
        journey.check("node saved")
        assert api(product, "GET", f"/nodes/{node['id']}", {}, token)[
            "reload_command"] == "sudo -n systemctl reload nginx"

        page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit log").click()
        page.get_by_label("Action").select_option("node.commands")
        page.get_by_role("button", name="Filter").click()
        expect(page.get_by_role("row").filter(has_text="cmd-1")).to_contain_text(
            "nginx -s reload → sudo -n systemctl reload nginx")
        journey.check("audit log of the command change")

        # The reload that signals the master through its pid file (no second parse
        # of a big pool), as the README recommends for large pools.
        page = journey.go(f"/admin/nodes/{node['id']}")
        page.get_by_role("link", name="Edit", exact=True).click()
        reload = page.get_by_label("Reload command", exact=True)
        reload.select_option(label="sudo -n pkill -HUP -F /run/nginx.pid -x nginx")
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_role("status").first).to_contain_text("Node cmd-1 saved")
        journey.check("node saved with the pid-file reload")
        # Saving leads to the nodes' list, which holds other journeys' nodes too.
        page = journey.go(f"/admin/nodes/{node['id']}")
        page.get_by_role("link", name="Edit", exact=True).click()
        expect(page.get_by_label("Reload command", exact=True)).to_have_value(
            "sudo -n pkill -HUP -F /run/nginx.pid -x nginx")
        assert api(product, "GET", f"/nodes/{node['id']}", {}, token)[
            "reload_command"] == "sudo -n pkill -HUP -F /run/nginx.pid -x nginx"
    finally:
        api(product, "DELETE", f"/nodes/{node['id']}", {}, token)
        pool = next(p for p in api(product, "GET", "/pools", {}, token)["items"]
                    if p["name"] == "commands")
        api(product, "DELETE", f"/pools/{pool['id']}", {}, token)
