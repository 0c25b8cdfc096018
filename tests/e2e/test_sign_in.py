"""Signing in and out in a real browser."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.e2e.conftest import account_menu, sign_in


def test_signing_in_by_clicking_lands_on_the_page_asked_for(journey_factory, product):
    journey = journey_factory()
    page = journey.go("/admin/nodes")
    expect(page).to_have_url(f"{product.url}/auth/login?next=%2Fadmin%2Fnodes")
    expect(page).to_have_title("Sign in · Reverse Proxy Control Center")
    journey.check("sign-in page")
    sign_in(journey, "admin", product.admin_password)
    expect(page).to_have_url(f"{product.url}/admin/nodes")
    navigation = page.get_by_role("navigation", name="Main")
    expect(navigation.get_by_role("link", name="Nodes")).to_have_attribute("aria-current", "page")
    journey.check("nodes after sign-in")


def test_pressing_enter_in_the_password_field_signs_in(journey_factory, product):
    journey = journey_factory()
    journey.go("/auth/login")
    sign_in(journey, "admin", product.admin_password, press_enter=True)
    expect(journey.page).to_have_url(f"{product.url}/admin/")
    expect(journey.page.get_by_role("heading", level=1)).to_have_text("Dashboard")


def test_a_wrong_password_is_said_once_and_focused(journey_factory, product):
    journey = journey_factory()
    page = journey.go("/auth/login")
    sign_in(journey, "admin", "not the password")
    summary = page.locator("#error-summary")
    expect(summary).to_contain_text("Invalid username or password.")
    expect(summary).to_be_focused()
    expect(page.get_by_label("Password")).to_have_attribute("aria-invalid", "true")
    journey.check("sign-in refused")
    summary.get_by_role("link", name="Password").click()
    expect(page.get_by_label("Password")).to_be_focused()


def test_after_signing_out_the_back_button_shows_no_signed_in_page(journey_factory, product):
    journey = journey_factory()
    page = journey.go("/admin/users")
    sign_in(journey, "admin", product.admin_password)
    expect(page.get_by_role("heading", level=1)).to_have_text("Users")
    saved = journey.context.cookies()
    account_menu(page, "Sign out")
    expect(page).to_have_url(f"{product.url}/auth/login")
    expect(page.get_by_role("status")).to_have_text("You are signed out.")
    page.go_back()
    expect(page).to_have_url(f"{product.url}/auth/login?next=%2Fadmin%2Fusers")
    expect(page.locator("#account-menu")).to_have_count(0)  # signed out
    # A copy of the cookies taken before signing out opens nothing either.
    thief = journey_factory("thief")
    thief.context.add_cookies(saved)
    thief.go("/admin/users")
    expect(thief.page).to_have_url(f"{product.url}/auth/login?next=%2Fadmin%2Fusers")


def test_the_navigation_collapses_on_a_phone_and_opens_with_the_keyboard(journey_factory,
                                                                        product):
    journey = journey_factory()
    page = journey.go("/auth/login")
    sign_in(journey, "admin", product.admin_password)
    page.set_viewport_size({"width": 390, "height": 844})
    nodes_link = page.get_by_role("navigation", name="Main").get_by_role("link", name="Nodes")
    expect(nodes_link).to_be_hidden()
    toggle = page.get_by_role("button", name="Show the navigation")
    toggle.focus()
    page.keyboard.press("Enter")
    expect(nodes_link).to_be_visible()
    nodes_link.focus()
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{product.url}/admin/nodes")


def test_the_theme_follows_the_system_and_the_toggle_persists(journey_factory, product):
    journey = journey_factory()
    page = journey.go("/auth/login")
    html = page.locator("html")
    expect(html).to_have_attribute("data-bs-theme", "light")
    page.emulate_media(color_scheme="dark")
    expect(html).to_have_attribute("data-bs-theme", "dark")
    page.get_by_role("button", name="Light mode").click()
    expect(html).to_have_attribute("data-bs-theme", "light")
    page.reload()
    expect(html).to_have_attribute("data-bs-theme", "light")  # the choice outranks the system
    page.get_by_role("button", name="Dark mode").click()
    page.emulate_media(color_scheme="light")
    page.reload()
    expect(html).to_have_attribute("data-bs-theme", "dark")


def test_the_skip_link_is_the_first_stop_of_the_keyboard(journey_factory, product):
    journey = journey_factory()
    page = journey.go("/auth/login")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to the content")
    expect(skip).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()


def test_signing_in_never_leads_to_another_site(journey_factory, product):
    for hostile in ("//evil.example/", "/\\evil.example/", "https://evil.example/"):
        journey = journey_factory()
        page = journey.go("/auth/login?next=" + hostile.replace("\\", "%5C"))
        sign_in(journey, "admin", product.admin_password)
        expect(page).to_have_url(f"{product.url}/admin/")
