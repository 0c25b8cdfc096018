"""Alerts in a real browser: an administrator adds a rule, sees its alert fire once
the node health job finds a node that does not answer, acknowledges it and silences
the node; a client sees the alert about their own site's failed deployment, and
nothing of the node's.

The jobs run from the CLI (``flask jobs run``), as an operator would run them now
rather than wait for the scheduler."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import Product, admin_token, api, make_client, sign_in
from tests.processes import free_port
from tests.sshd import SshServer

POOL = "alerting"
NODE = "lost-1"


@pytest.fixture(scope="module")
def lost_node(product: Product, sshd: SshServer) -> str:
    """A pool whose only node's SSH port has nothing listening: it cannot be reached,
    and every deployment to the pool fails."""
    token = admin_token(product)
    api(product, "POST", "/pools", {"name": POOL}, token)
    api(product, "POST", "/nodes", {"name": NODE, "host": "127.0.0.1",
                                    "ssh_port": free_port(), "ssh_user": "root",
                                    "ssh_private_key": sshd.client_key_text, "pool": POOL},
        token)
    return NODE


def finished(product: Product, token: str, rollout_id: int) -> dict[str, Any]:
    """The deployment once it has ended (it fails fast: the port refuses)."""
    deadline = time.monotonic() + 120
    while True:
        state = api_get(product, f"/deployments/{rollout_id}", token)
        if state["status"] not in ("pending", "running") or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def api_get(product: Product, path: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(product.url + "/api/v1" + path,
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return dict(json.loads(response.read()))


def test_an_administrator_adds_a_rule_sees_it_fire_acknowledges_and_silences(
        journey_factory, product, lost_node):
    journey = journey_factory("admin")
    journey.go("/auth/login")
    sign_in(journey, "admin", product.admin_password)
    page = journey.page
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Alerts").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Alerts")
    journey.check("alerts")

    tabs = page.get_by_role("navigation", name="Alert pages")
    tabs.get_by_role("link", name="Rules").click()
    page.get_by_role("link", name="Add a rule").click()
    page.get_by_label("Name").fill("Node does not answer")
    page.get_by_label("Kind").select_option(label="Node unreachable")
    page.get_by_label("Severity").select_option("critical")
    page.get_by_label("Remind every (minutes)").fill("60")
    journey.check("new rule")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status").first).to_contain_text("Rule Node does not answer added")
    row = page.locator("#rule-list tbody tr").filter(has_text="Node does not answer")
    expect(row).to_contain_text("Node unreachable")
    expect(row).to_contain_text("every 60 min")
    journey.check("rules")

    product.cli("jobs", "run", "node_health")
    product.cli("jobs", "run", "alerts")
    tabs.get_by_role("link", name="Alerts").click()
    row = page.locator("#alert-list tbody tr").filter(has_text=NODE)
    expect(row).to_contain_text("firing")
    expect(row).to_contain_text(f"{NODE} does not answer over SSH")
    journey.check("a firing alert")

    row.get_by_role("link", name="Node does not answer").click()
    expect(page.locator("#alert-transitions")).to_contain_text("opened, firing")
    page.get_by_role("button", name="Acknowledge").click()
    expect(page.get_by_role("status").first).to_contain_text("Alert acknowledged")
    expect(page.locator("#alert-acknowledged")).to_contain_text("by admin")
    expect(page.get_by_role("button", name="Acknowledge")).to_have_count(0)
    journey.check("an acknowledged alert")

    page.get_by_role("link", name="Silence this node").click()
    expect(page.get_by_label("Node")).to_have_value(NODE)
    page.get_by_label("Lasts (minutes)").fill("120")
    page.get_by_label("Reason").fill("replacing its disk")
    journey.check("new silence")
    page.get_by_role("button", name="Silence", exact=True).click()
    expect(page.get_by_role("status").first).to_contain_text("Silence added")
    silence = page.locator("#silence-list tbody tr").filter(has_text="replacing its disk")
    expect(silence).to_contain_text(NODE)
    expect(silence).to_contain_text("active")
    journey.check("silences")
    silence.get_by_role("button", name="End now").click()
    expect(page.get_by_role("status").first).to_contain_text("Silence ended")
    expect(page.locator("#silence-list tbody tr").filter(
        has_text="replacing its disk")).to_contain_text("ended")


def test_a_client_sees_the_alert_about_their_own_site_and_acknowledges_it(
        journey_factory, product, lost_node):
    password = make_client(product, "ali")
    token = api(product, "POST", "/tokens", {"username": "ali", "password": password,
                                             "name": "setup"})["token"]
    site = api(product, "POST", "/sites", {"domain": "alerted.example.test", "pool": POOL,
                                           "backends": [{"host": "127.0.0.1", "port": 9}]},
               token)
    started = api(product, "POST", f"/sites/{site['id']}/deploy", {}, token)
    assert finished(product, token, started["id"])["status"] == "failed"
    api(product, "POST", "/alert-rules", {"name": "Deployment failed",
                                          "kind": "deployment_failed"}, admin_token(product))
    product.cli("jobs", "run", "node_health")
    product.cli("jobs", "run", "alerts")

    journey = journey_factory("ali")
    journey.go("/auth/login")
    sign_in(journey, "ali", password)
    page = journey.page
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Alerts").click()
    row = page.locator("#alert-list tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("alerted.example.test")
    expect(row).to_contain_text("Deployment failed")
    expect(row).to_contain_text("firing")
    assert NODE not in page.content()
    journey.check("a client's alerts")

    row.get_by_role("link", name="Deployment failed").click()
    expect(page.locator("#alert-summary")).to_contain_text("the latest deployment of "
                                                           "alerted.example.test")
    page.get_by_role("button", name="Acknowledge").click()
    expect(page.locator("#alert-acknowledged")).to_contain_text("by you")
    assert NODE not in page.content()
    journey.check("a client's acknowledged alert")
    page.get_by_role("navigation", name="breadcrumb").get_by_role("link", name="Alerts").click()
    page.get_by_role("navigation", name="Alert pages").get_by_role("link", name="History").click()
    expect(page.locator("#alert-history tbody tr")).to_have_count(1)
    journey.check("a client's alert history")
