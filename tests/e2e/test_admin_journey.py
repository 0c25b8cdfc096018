"""An administrator sets up a fleet through the browser: a pool, a real node
(sshd + nginx on loopback), its check, a client with a quota; all of it is in the
audit log under the administrator's name."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.e2e.conftest import api, sign_in


def test_an_administrator_sets_up_a_pool_a_node_and_a_client(journey_factory, product, sshd,
                                                            nginx_node):
    journey = journey_factory()
    page = journey.go("/")
    sign_in(journey, "admin", product.admin_password, press_enter=True)
    navigation = page.get_by_role("navigation", name="Main")
    journey.check("dashboard")

    navigation.get_by_role("link", name="Pools").click()
    page.get_by_role("link", name="Add a pool").click()
    journey.check("new pool")
    page.get_by_label("Name").fill("edge-eu")
    page.get_by_label("Description").fill("Edge nodes in Europe")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_contain_text("edge-eu")
    expect(page.get_by_role("cell", name="edge-eu")).to_be_visible()
    journey.check("pools")

    navigation.get_by_role("link", name="Nodes").click()
    page.get_by_role("link", name="Add a node").click()
    spec = nginx_node.spec
    page.get_by_label("Name", exact=True).fill("eu-1")
    page.get_by_label("Pool").select_option("edge-eu")
    page.get_by_label("Host", exact=True).fill("127.0.0.1")
    page.get_by_label("SSH port").fill(str(sshd.port))
    page.get_by_label("SSH user").fill("root")
    page.get_by_label("SSH private key").fill(sshd.client_key_text)
    page.get_by_label("Proxy engine").select_option("nginx")
    page.get_by_label("Config directory").fill(spec.config_dir)
    page.get_by_label("Custom test command").fill(spec.test_command)
    page.get_by_label("Custom reload command").fill(spec.reload_command)
    page.get_by_label("Listen address").fill(spec.listen_address or "")
    page.get_by_label("HTTP port").fill(str(spec.http_port))
    page.get_by_label("HTTPS port").fill(str(spec.https_port))
    page.get_by_label("Log directory").fill(spec.log_dir or "")
    page.get_by_label("Cache directory").fill(spec.cache_dir or "")
    journey.check("new node")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_contain_text("eu-1")
    page.get_by_role("link", name="eu-1", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("eu-1")
    journey.check("node page")

    # Before its first deployment nothing of ours listens on the node: said in red.
    page.get_by_role("button", name="Check", exact=True).click()
    expect(page.locator(".alert-danger")).to_contain_text("Node eu-1 failed its check (HTTP)")
    expect(page.get_by_text("Node eu-1 does not answer HTTP on its listen address")).to_be_visible()
    journey.check("node check failed")

    dialogs: list[str] = []
    page.once("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
    page.get_by_role("button", name="Deploy", exact=True).click()
    assert dialogs and "eu-1" in dialogs[0]
    expect(page.locator("#deployment-summary")).to_have_text("deployed on 1 of 1 node",
                                                             timeout=30_000)
    journey.check("node deployment")
    page.go_back()
    page.reload()
    page.get_by_role("button", name="Check", exact=True).click()
    expect(page.locator(".alert-success")).to_contain_text("Node eu-1 is healthy")
    journey.check("node checked")

    navigation.get_by_role("link", name="Users").click()
    page.get_by_role("link", name="Add a user").click()
    page.get_by_label("Username").fill("carol")
    page.get_by_label("Email").fill("carol@corp.internal")
    page.get_by_label("Role").select_option("client")
    page.get_by_label("Site quota").fill("3")
    journey.check("new user")
    page.get_by_role("button", name="Save").click()
    password = page.get_by_label("password for carol").input_value()
    assert len(password) >= 12
    journey.context.grant_permissions(["clipboard-read", "clipboard-write"])
    # The button works once the page's script has loaded: a click before is lost.
    page.wait_for_load_state("load")
    page.get_by_role("button", name="Copy").click()
    expect(page.locator("#password-copied")).to_have_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == password
    journey.check("user created")

    navigation.get_by_role("link", name="Audit log").click()
    table = page.get_by_role("table")
    for action, name in (("pool.create", "pool edge-eu"), ("node.create", "node eu-1"),
                         ("node.check", "node eu-1"), ("user.create", "user carol")):
        row = table.get_by_role("row").filter(has_text=action).first
        expect(row).to_contain_text("admin")
        expect(row).to_contain_text(name)
    expect(table).not_to_contain_text(re.compile(r"user #\d"))
    journey.check("audit log")

    # The dashboard says how the fleet is, links each figure to its list, and keeps
    # itself up to date without a reload.
    navigation.get_by_role("link", name="Dashboard").click()
    disabled = page.locator('[data-figure="disabled"]')
    before = int(disabled.inner_text())
    journey.check("dashboard with a node")
    token = api(product, "POST", "/tokens", {"username": "admin", "name": "journey",
                                             "password": product.admin_password})["token"]
    api(product, "POST", "/nodes", {"name": "spare-1", "host": "127.0.0.1", "ssh_port": 22,
                                    "ssh_password": "unused", "enabled": False}, token)
    expect(disabled).to_have_text(str(before + 1), timeout=20_000)
    page.get_by_role("link", name="disabled").click()
    expect(page.get_by_role("link", name="spare-1")).to_be_visible()
    expect(page.get_by_role("link", name="eu-1", exact=True)).to_have_count(0)
    journey.check("disabled nodes")
