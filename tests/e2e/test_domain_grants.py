"""An administrator gives a client a domain from the user's page, and takes it back;
another client is refused names under it meanwhile."""

from __future__ import annotations

import urllib.error

from playwright.sync_api import expect

from tests.e2e.conftest import SHARED_POOL, api, make_client, sign_in


def create_site(product, token: str, domain: str) -> int:
    """The API's status for a new site of that name."""
    try:
        api(product, "POST", "/sites", {
            "domain": domain, "pool": SHARED_POOL,
            "backends": [{"host": "127.0.0.1", "port": 8080, "weight": 1}]}, token)
    except urllib.error.HTTPError as refused:
        return refused.code
    return 201


def test_an_administrator_gives_a_client_a_domain_and_takes_it_back(journey_factory, product,
                                                                    shared_pool):
    make_client(product, "olga")
    password = make_client(product, "pete")
    pete = api(product, "POST", "/tokens", {"username": "pete", "password": password,
                                            "name": "setup"})["token"]
    admin = journey_factory("admin")
    page = admin.go("/admin/users?q=olga")
    sign_in(admin, "admin", product.admin_password)
    page.get_by_role("link", name="olga").first.click()
    domains = page.get_by_role("region", name="Domains given to olga")
    expect(domains).to_contain_text("None: names go to the first client who claims them.")
    admin.check("user page with domains")

    box = domains.get_by_label("Domain")
    box.fill("co.uk")
    domains.get_by_role("button", name="Give this domain").click()
    expect(page.locator("#error-summary")).to_contain_text("co.uk is a public suffix")
    expect(page.get_by_role("textbox", name="Domain")).to_have_attribute("aria-invalid", "true")
    admin.check("domain refused")

    page.get_by_role("textbox", name="Domain").fill("olga-shop.test")
    page.get_by_role("button", name="Give this domain").click()
    expect(page.get_by_role("status").first).to_contain_text("olga-shop.test is olga's")
    expect(page.locator("#domain-grants")).to_contain_text("olga-shop.test")
    assert create_site(product, pete, "www.olga-shop.test") == 422

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#domain-grants").get_by_role("button", name="Take back").click()
    expect(page.get_by_role("status").first).to_contain_text("open to every client again")
    expect(page.locator("#domain-grants")).to_have_count(0)
    assert create_site(product, pete, "www.olga-shop.test") == 201
