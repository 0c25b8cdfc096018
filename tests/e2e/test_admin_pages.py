"""Pages changed along with the journeys: sessions on the profile, list searches and
filters, refused actions not offered, and blocking with a confirmation."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.e2e.conftest import SHARED_POOL, account_menu, api, make_client, sign_in


def test_signing_out_another_session_from_the_profile(journey_factory, product):
    password = make_client(product, "kim")
    laptop, phone = journey_factory("laptop"), journey_factory("phone")
    for journey in (laptop, phone):
        journey.go("/auth/login")
        sign_in(journey, "kim", password)
    page = laptop.page
    account_menu(page, "Profile")
    sessions = page.locator("#sessions")
    expect(sessions.get_by_text("this browser")).to_have_count(1)
    laptop.check("profile sessions")
    page.once("dialog", lambda dialog: dialog.accept())
    sessions.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("status").first).to_contain_text("signed out")
    phone.page.reload()
    expect(phone.page).to_have_url(f"{product.url}/auth/login?next=%2Fclient%2F")
    laptop.page.reload()
    expect(laptop.page.get_by_role("heading", level=1)).to_have_text("Profile")


def test_an_administrator_searches_lists_blocks_a_site_and_is_offered_no_self_harm(
        journey_factory, product, shared_pool):
    owner = make_client(product, "lee")
    token = api(product, "POST", "/tokens", {"username": "lee", "password": owner,
                                             "name": "setup"})["token"]
    site = api(product, "POST", "/sites", {
        "domain": "shady.example.test", "pool": SHARED_POOL,
        "backends": [{"host": "127.0.0.1", "port": 9}]}, token)
    journey = journey_factory()
    page = journey.go("/admin/users")
    sign_in(journey, "admin", product.admin_password)
    own = page.get_by_role("row").filter(has_text="admin@example.com")
    expect(own).to_contain_text("your own account")
    expect(own.get_by_role("button", name="Deactivate")).to_have_count(0)
    expect(own.get_by_role("button", name="Delete")).to_have_count(0)

    page.goto(f"{product.url}/admin/pools")
    page.get_by_label("Search").fill("shared")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_role("cell", name="shared", exact=True)).to_be_visible()
    journey.check("pools searched")

    page.goto(f"{product.url}/admin/deployments")
    page.get_by_label("Status").select_option("failed")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(f"{product.url}/admin/deployments?q=&status=failed")
    journey.check("failed deployments")

    page.goto(f"{product.url}/admin/sites/{site['id']}")
    page.get_by_label("Reason", exact=True).fill("phishing reported")
    dialogs: list[str] = []
    page.once("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
    page.get_by_role("button", name="Block site").click()
    assert dialogs and "shady.example.test" in dialogs[0]
    expect(page.get_by_text("phishing reported").first).to_be_visible()
    journey.check("blocked site")
