"""The main journeys with the keyboard alone: every control reachable with Tab,
activated with Enter or Space, and a visible focus ring wherever the focus is."""

from __future__ import annotations

from playwright.sync_api import Locator, Page, expect

from tests.e2e.conftest import SHARED_POOL, account_menu, make_client


def tab_to(page: Page, target: Locator, limit: int = 60) -> None:
    """Press Tab until ``target`` has the focus, as a keyboard user would."""
    for _ in range(limit):
        if target.evaluate("element => element === document.activeElement"):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"{target} cannot be reached with Tab")


def assert_focus_ring(target: Locator) -> None:
    outline = target.evaluate(
        "element => { const s = getComputedStyle(element); "
        "return [s.outlineStyle, parseFloat(s.outlineWidth)]; }")
    assert outline[0] != "none" and outline[1] >= 2, outline


def test_a_client_signs_in_and_adds_a_site_with_the_keyboard_alone(journey_factory, product,
                                                                   shared_pool):
    password = make_client(product, "hana")
    journey = journey_factory()
    page = journey.go("/auth/login")
    tab_to(page, page.get_by_label("Username"))
    page.keyboard.type("hana")
    page.keyboard.press("Tab")
    page.keyboard.type(password)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_have_text("My sites")

    # The dark navigation shows where the focus is.
    mine = page.get_by_role("navigation", name="Main").get_by_role("link", name="My sites")
    tab_to(page, mine)
    assert_focus_ring(mine)

    add = page.get_by_role("link", name="Add a site")
    tab_to(page, add)
    assert_focus_ring(add)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_have_text("New site")
    tab_to(page, page.get_by_label("Domain"))
    page.keyboard.type("keys.example.test")
    tab_to(page, page.get_by_label("Backends"))
    page.keyboard.type("127.0.0.1:8080")
    pool = page.get_by_label("Pool")
    tab_to(page, pool)
    pool.select_option(SHARED_POOL)  # a native select: arrow keys in a real browser
    save = page.get_by_role("button", name="Save")
    tab_to(page, save, limit=120)
    assert_focus_ring(save)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_contain_text("keys.example.test")


def test_copy_works_without_the_clipboard_api_on_plain_http(journey_factory, product):
    # On plain HTTP at a non-local address browsers withhold navigator.clipboard; the
    # page falls back to copying a selection.
    journey = journey_factory()
    journey.context.add_init_script(
        "Object.defineProperty(Navigator.prototype, 'clipboard', {get: () => undefined});")
    password = make_client(product, "ivan")
    page = journey.go("/auth/login")
    page.get_by_label("Username").fill("ivan")
    page.get_by_label("Password").fill(password)
    page.get_by_label("Password").press("Enter")
    account_menu(page, "API tokens")
    page.get_by_label("Name").fill("fallback")
    page.get_by_role("button", name="Create token").click()
    token = page.get_by_label("API token").input_value()
    copied: list[str] = []

    def record(text: str) -> None:
        copied.append(text)

    page.expose_function("recordCopy", record)
    page.evaluate("document.addEventListener('copy', (event) => { const field = event.target; "
                  "window.recordCopy(field.value.substring(field.selectionStart, "
                  "field.selectionEnd)); })")
    page.get_by_role("button", name="Copy").click()
    expect(page.locator("#token-copied")).to_have_text("Copied.")
    assert copied == [token]
