"""An administrator points a node at its Glances and follows its metrics: the node
form refuses a Glances address off the node's loopback, the fleet overview shows
the node's figures next to a node without Glances ("no metrics"), and the node's
page charts them over the last hour, day and month."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.e2e.conftest import admin_token, api, sign_in
from tests.glances import glances_factory as glances_factory  # noqa: F401  (fixture)
from tests.processes import free_port

GLANCES_ADDRESS = "127.0.0.69"


def test_an_administrator_follows_a_nodes_metrics(journey_factory, product, sshd,
                                                  glances_factory):
    glances = glances_factory(GLANCES_ADDRESS)
    token = admin_token(product)
    # The second node's Glances is nowhere: it shows "no metrics".
    nowhere = f"ssh://127.0.0.70:{free_port('127.0.0.70')}"
    for name, glances_url in (("metrics-1", None), ("metrics-2", nowhere)):
        api(product, "POST", "/nodes", {"name": name, "host": "127.0.0.1",
                                         "ssh_port": sshd.port, "glances_url": glances_url,
                                         "ssh_private_key": sshd.client_key_text}, token)

    journey = journey_factory()
    page = journey.go("/admin/nodes")
    sign_in(journey, "admin", product.admin_password)
    page.get_by_role("link", name="metrics-1", exact=True).click()
    page.get_by_role("link", name="Edit").click()
    field = page.get_by_label("Glances URL")
    field.fill("ssh://10.0.0.5:61208")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#error-summary")).to_contain_text("the node's own loopback")
    expect(page.get_by_label("Glances URL")).to_have_attribute("aria-invalid", "true")
    journey.check("glances address refused")
    page.get_by_label("Glances URL").fill(f"ssh://{glances.address}:{glances.port}")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status").first).to_contain_text("Node metrics-1 saved")

    # The scheduler reads every minute; an operator can run the job at once.
    for _ in range(2):
        assert "succeeded" in product.cli("jobs", "run", "node_metrics")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Fleet").click()
    expect(page.get_by_role("heading", name="Fleet", level=1)).to_be_visible()
    measured = page.get_by_role("row").filter(has=page.get_by_role("rowheader",
                                                                   name=re.compile("metrics-1")))
    expect(measured.get_by_role("meter", name="CPU of metrics-1")).to_be_visible()
    expect(measured.get_by_role("meter", name="Memory of metrics-1")).to_be_visible()
    expect(measured.get_by_role("meter", name="Disk of metrics-1")).to_be_visible()
    bare = page.get_by_role("row").filter(has=page.get_by_role("rowheader",
                                                               name=re.compile("metrics-2")))
    expect(bare).to_contain_text("no metrics")
    expect(bare).to_contain_text("nothing listens on 127.0.0.70")
    journey.check("fleet overview")

    measured.get_by_role("link", name="metrics-1").click()
    metrics = page.locator("#metrics")
    expect(metrics.get_by_role("link", name="Last 24 hours")).to_have_attribute(
        "aria-current", "true")
    expect(metrics).to_contain_text("Glances API 3")
    expect(metrics.get_by_role("img", name=re.compile(r"^CPU \(%\)"))).to_be_visible()
    expect(metrics.get_by_role("img")).to_have_count(7)
    expect(metrics.get_by_role("table")).to_contain_text("/")  # its file systems
    journey.check("node metrics over a day")

    metrics.get_by_role("link", name="Last hour").click()
    expect(page).to_have_url(re.compile(r"range=1h#metrics$"))
    metrics = page.locator("#metrics")
    expect(metrics.get_by_role("link", name="Last hour")).to_have_attribute(
        "aria-current", "true")
    expect(metrics).to_contain_text("each sample")
    # Each read is one sample; the scheduler may have read the node once more on its
    # own minute. The summary a screen reader gets counts the same samples the chart draws.
    chart = metrics.locator("figure").first
    points = int(chart.get_attribute("data-points") or "0")
    assert points >= 2
    expect(chart.locator("p.visually-hidden")).to_contain_text(f"over {points} measurement(s)")
    journey.check("node metrics over an hour")

    metrics.get_by_role("link", name="Last 30 days").click()
    expect(page.locator("#metrics")).to_contain_text("hourly averages")
    expect(page.locator("#metrics").get_by_role("link", name="Last 30 days")).to_have_attribute(
        "aria-current", "true")
    journey.check("node metrics over a month")
