"""A client uses the product through the browser: a site with two backends, every
error of a bad submission at once, a deployment watched live, an API token, a new
password, signing out."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.e2e.conftest import (
    SHARED_POOL,
    account_menu,
    add_pool_with_node,
    api,
    make_client,
    sign_in,
)
from tests.fleet import start_nginx
from tests.nginx_node import Backend, fetch
from tests.processes import free_port


def test_a_client_creates_deploys_and_manages_a_site(journey_factory, product, shared_pool):
    password = make_client(product, "dave")
    backends = [Backend("one"), Backend("two")]
    try:
        journey = journey_factory()
        page = journey.go("/")
        sign_in(journey, "dave", password)
        expect(page.get_by_role("heading", level=1)).to_have_text("My sites")
        navigation = page.get_by_role("navigation", name="Main")
        expect(navigation.get_by_role("link", name="Nodes")).to_have_count(0)
        expect(navigation.get_by_role("link", name="Users")).to_have_count(0)
        journey.check("client dashboard")

        page.get_by_role("link", name="Add a site").click()
        journey.check("new site")
        # Each pool says what it has; the table shows what its engines can do.
        page.get_by_label("Pool").select_option(SHARED_POOL)
        expect(page.get_by_label("Pool").locator("option:checked")).to_have_text(
            "shared (1 node: nginx)")
        support = page.locator("#engine-support")
        expect(support.get_by_role("columnheader", name="nginx")).to_be_visible()
        expect(support.get_by_role("columnheader", name="caddy")).to_be_hidden()
        # Three problems at once: a name, a backend written as a URL, a header line.
        page.get_by_label("Domain").fill("not a domain")
        page.get_by_label("Backends").fill(
            f"127.0.0.1:{backends[0].port}\nhttp://127.0.0.1:{backends[1].port}")
        page.get_by_label("Pool").select_option(SHARED_POOL)
        page.get_by_label("Custom headers").fill("X-Team: blue\nthis is no header")
        page.get_by_role("button", name="Save").click()
        summary = page.locator("#error-summary")
        expect(summary).to_be_focused()
        expect(summary).to_contain_text("Domain")
        expect(summary).to_contain_text("line 2: write host:port without http://")
        expect(summary).to_contain_text("line 2: write Name: value")
        for label in ("Domain", "Backends", "Custom headers"):
            expect(page.get_by_label(label)).to_have_attribute("aria-invalid", "true")
        journey.check("site form with errors")

        summary.get_by_role("link", name="Domain").click()
        expect(page.get_by_label("Domain")).to_be_focused()
        page.keyboard.press("Control+A")
        page.keyboard.type("shop.example.test")
        page.get_by_label("Backends").fill(
            f"127.0.0.1:{backends[0].port}\n127.0.0.1:{backends[1].port}")
        page.get_by_label("Custom headers").fill("X-Team: blue")
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_role("heading", level=1)).to_contain_text("shop.example.test")
        expect(page.get_by_role("status").first).to_contain_text("created")
        journey.check("site page")

        navigation.get_by_role("link", name="My sites").click()
        row = page.get_by_role("row").filter(has_text="shop.example.test")
        expect(row).to_contain_text("deployed on 0 of 1 node")
        expect(row).to_contain_text("not deployed yet")
        row.get_by_role("link", name="shop.example.test").click()

        page.get_by_role("button", name="Deploy now").click()
        expect(page.locator("#deployment-summary")).to_have_text("deployed on 1 of 1 node",
                                                                 timeout=30_000)
        journey.check("site deployment")

        navigation.get_by_role("link", name="My sites").click()
        expect(row).to_contain_text("deployed on 1 of 1 node")
        expect(row).to_contain_text("succeeded")
        page.get_by_label("Search").fill("nothing-like-it")
        page.get_by_label("Search").press("Enter")
        expect(page.get_by_text("No site matches these filters.")).to_be_visible()
        page.get_by_label("Search").fill("shop")
        page.get_by_label("State").select_option("deployed")
        page.get_by_role("button", name="Filter").click()
        expect(row).to_be_visible()
        journey.check("my sites filtered")
        row.get_by_role("link", name="shop.example.test").click()
        # The node serves it for real, from both backends.
        answers = {fetch(shared_pool, "shop.example.test").json()["backend"] for _ in range(8)}
        assert answers == {"one", "two"}

        # A certificate from the CA (Pebble validates HTTP-01 on the pool's node).
        page.get_by_role("link", name="Edit").click()
        page.get_by_label("TLS certificate").select_option("letsencrypt")
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_role("status").first).to_contain_text("saved")
        page.get_by_role("button", name="Issue now").click()
        expect(page.get_by_role("status").first).to_contain_text("Certificate requested")
        status = page.locator("#certificate [data-cert-status]")
        expect(status).to_have_text("valid", timeout=60_000)  # refreshed without a reload
        journey.check("certificate valid")

        account_menu(page, "API tokens")
        page.get_by_label("Name").fill("deploy script")
        page.get_by_role("button", name="Create token").click()
        token = page.get_by_label("API token").input_value()
        assert token
        journey.context.grant_permissions(["clipboard-read", "clipboard-write"])
        page.get_by_role("button", name="Copy").click()
        expect(page.locator("#token-copied")).to_have_text("Copied.")
        assert page.evaluate("navigator.clipboard.readText()") == token
        journey.check("token created")

        account_menu(page, "Profile")
        page.get_by_label("Current password").fill(password)
        page.get_by_label("New password", exact=True).fill("a new long password 42")
        page.get_by_label("Repeat the new password").fill("a new long password 42")
        page.get_by_role("button", name="Change password").click()
        expect(page).to_have_url(f"{product.url}/auth/login")
        sign_in(journey, "dave", "a new long password 42")
        expect(page.get_by_role("heading", level=1)).to_have_text("My sites")
        expect(page.get_by_role("link", name="shop.example.test")).to_be_visible()

        account_menu(page, "Sign out")
        expect(page).to_have_url(f"{product.url}/auth/login")
        page.go_back()
        expect(page.locator("#account-menu")).to_have_count(0)  # signed out
        expect(page).to_have_url(f"{product.url}/auth/login?next=%2Fclient%2F")
    finally:
        for backend in backends:
            backend.stop()



def test_a_client_sees_no_administration_and_no_other_clients_site(journey_factory, product,
                                                                  shared_pool):
    owner_password = make_client(product, "frank")
    token = api(product, "POST", "/tokens", {"username": "frank", "password": owner_password,
                                             "name": "setup"})["token"]
    site = api(product, "POST", "/sites", {
        "domain": "private.example.test", "pool": SHARED_POOL,
        "backends": [{"host": "127.0.0.1", "port": 9, "weight": 1}]}, token)

    journey = journey_factory()
    page = journey.go("/")
    sign_in(journey, "erin", make_client(product, "erin"))
    navigation = page.get_by_role("navigation", name="Main")
    for admin_page in ("Dashboard", "Nodes", "Pools", "Users", "Audit log", "Settings"):
        expect(navigation.get_by_role("link", name=admin_page, exact=True)).to_have_count(0)

    response = page.goto(f"{product.url}/client/sites/{site['id']}")
    assert response is not None and response.status == 404
    expect(page.get_by_role("heading", level=1)).to_contain_text("404")
    expect(page.locator("main")).not_to_contain_text("private.example.test")
    journey.check("another client's site")
    response = page.goto(f"{product.url}/admin/nodes")
    assert response is not None and response.status in (403, 404)
    expect(page.locator("main")).not_to_contain_text("shared-1")


def test_a_failed_deployment_is_told_in_words_without_the_fleets_details(
        journey_factory, product, sshd):
    node = start_nginx("127.0.0.63")
    try:
        add_pool_with_node(product, sshd, node, "lonely", "lonely-1")
        password = make_client(product, "gina")
        token = api(product, "POST", "/tokens", {"username": "gina", "password": password,
                                                 "name": "setup"})["token"]
        # A backend name the node cannot resolve: its nginx refuses the configuration.
        site = api(product, "POST", "/sites", {
            "domain": "broken.example.test", "pool": "lonely",
            "backends": [{"host": "no-such-backend.invalid", "port": 80, "weight": 1}]}, token)

        client = journey_factory("client")
        page = client.go(f"/client/sites/{site['id']}")
        sign_in(client, "gina", password)
        page.get_by_role("button", name="Deploy now").click()
        expect(page.locator("#deployment-status")).to_have_text("failed", timeout=30_000)
        expect(page.locator("#deployment-summary")).to_have_text("deployed on 0 of 1 node")
        refused = ('A proxy node refused this version of the site: host not found in upstream '
                   '"no-such-backend.invalid:80"')
        expect(page.locator("#deployment-error")).to_contain_text(refused)
        table = page.locator("#deployment-nodes")
        expect(table).to_contain_text(refused)
        main = page.locator("main")
        for secret in ("lonely-1", "127.0.0", str(sshd.port), "/tmp", "emerg", "Details"):
            expect(main).not_to_contain_text(secret)
        client.check("failed deployment, client")
        page.reload()  # the page drawn by the server says the same as the live one
        expect(table).to_contain_text(refused)
        expect(main).not_to_contain_text("lonely-1")
        rollout_path = page.url.removeprefix(product.url).replace("/client/", "/admin/")
        # The site's page says it too, and what to do.
        page.get_by_role("link", name="broken.example.test").first.click()
        expect(page.locator("main")).to_contain_text(refused)
        expect(page.locator("main")).to_contain_text("deploy it again")
        client.check("refused site, client")

        admin = journey_factory("admin")
        page = admin.go(rollout_path)
        sign_in(admin, "admin", product.admin_password)
        table = page.locator("#deployment-nodes")
        expect(table).to_contain_text("Node lonely-1 refused this site's new version")
        table.get_by_text("Details").click()
        expect(table).to_contain_text("host not found in upstream")
        admin.check("failed deployment, admin")

        # A backend that is down: the site goes out, with a warning its owner reads.
        api(product, "PATCH", f"/sites/{site['id']}", {
            "backends": [{"host": "127.0.0.1", "port": free_port(), "weight": 1}]}, token)
        page = client.go(f"/client/sites/{site['id']}")
        page.get_by_role("button", name="Deploy now").click()
        expect(page.locator("#deployment-status")).to_have_text("succeeded", timeout=30_000)
        page.get_by_role("link", name="broken.example.test").first.click()
        warning = page.locator("[data-deploy-warning]")
        expect(warning).to_contain_text("the proxy answered HTTP 502 for broken.example.test")
        expect(warning).to_contain_text("is its backend up")
        expect(page.locator("main")).not_to_contain_text("refused this version")
        client.check("site with a warning, client")
    finally:
        node.stop()
        node.remove()
