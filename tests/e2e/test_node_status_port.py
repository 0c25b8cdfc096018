"""An administrator sets where a node's proxy tells its counters: the node form
refuses a status port that is the node's SSH port, under its field, takes another
one, and the node's page says where the counters are read; cleared, the port is the
engine's default again."""

from __future__ import annotations

from playwright.sync_api import expect

from tests import factories
from tests.e2e.conftest import admin_token, api, sign_in

NAME = "status-1"


def test_an_administrator_types_a_nodes_status_port(journey_factory, product):
    token = admin_token(product)
    journey = journey_factory()
    page = journey.go("/admin/nodes")
    sign_in(journey, "admin", product.admin_password)
    try:
        page.get_by_role("link", name="Add a node").click()
        page.get_by_label("Name", exact=True).fill(NAME)
        page.get_by_label("Host", exact=True).fill("192.0.2.44")
        page.get_by_label("SSH port").fill("2244")
        page.get_by_label("SSH private key").fill(factories.ssh_key())
        page.get_by_label("Proxy engine").select_option("nginx")
        # Not a deployment target of the other journeys' pools.
        page.get_by_label("Enabled (receives deployments)").uncheck()
        status_port = page.get_by_label("Status port")
        expect(status_port).to_have_value("")
        status_port.fill("2244")
        page.get_by_role("button", name="Save").click()
        expect(page.locator("#error-summary")).to_contain_text("is the node's SSH port")
        expect(page.get_by_label("Status port")).to_have_attribute("aria-invalid", "true")
        expect(page.locator("#status_port-error")).to_contain_text(
            "it must differ from the SSH, HTTP and HTTPS ports")
        journey.check("status port refused")

        page.get_by_label("SSH private key").fill(factories.ssh_key())
        page.get_by_label("Status port").fill("9144")
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_role("status").first).to_contain_text(f"Node {NAME} added.")
        page.get_by_role("link", name=NAME, exact=True).click()
        counters = page.locator("#status-port")
        expect(counters).to_contain_text("read at 127.0.0.1:9144 on the node")
        expect(counters.locator("[data-status-port]")).to_have_text("9144")
        journey.check("node page with its status port")

        page.get_by_role("link", name="Edit").click()
        expect(page.get_by_label("Status port")).to_have_value("9144")
        page.get_by_label("Status port").fill("")
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_role("status").first).to_contain_text(f"Node {NAME} saved.")
        page.get_by_role("link", name=NAME, exact=True).click()
        expect(page.locator("#status-port")).to_contain_text(
            "read at 127.0.0.1:8899 on the node. Status port: 8899 (the engine's default).")
    finally:
        for node in api(product, "GET", f"/nodes?q={NAME}", {}, token)["items"]:
            api(product, "DELETE", f"/nodes/{node['id']}", {}, token)
