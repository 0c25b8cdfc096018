"""Two-factor sign-in in a real browser: set up from the profile by reading the key
off the page, signing in with a code and with a recovery code, wrong and replayed
codes refused, an administrator's reset, and administrators held at set-up while
the setting requires it.

The server accepts a code of its own 30-second step and of one step either side
(``two_factor.VALID_WINDOW``), and each step once per account.  :class:`Phone` plays
the authenticator app: each code it gives is of a step later than the last one used,
taken from the window when the clock allows and waited for otherwise, so the journeys
never wait half a minute unless the clock makes them.
"""

from __future__ import annotations

import secrets
import time

import pyotp
from playwright.sync_api import Page, expect

from tests.e2e.conftest import Journey, account_menu, admin_token, api, make_client, sign_in


class Phone:
    """An authenticator app holding the key the set-up page showed."""

    def __init__(self, key_on_page: str) -> None:
        self.totp = pyotp.TOTP(key_on_page.replace(" ", ""))
        self.last_step: int | None = None
        self.last_code = ""

    def code(self, *, earliest: int = 0) -> str:
        """A code never given before: of the step ``earliest`` steps from now at the
        soonest, and of a step the server accepts when it arrives."""
        now = self.totp.timecode(time.time())
        if earliest < 0 and self.totp.interval - time.time() % self.totp.interval < 10:
            # An earlier step stays acceptable only until the current one ends: on a
            # busy machine the request may reach the server after that.
            earliest = 0
        step = now + earliest if self.last_step is None else max(self.last_step + 1,
                                                                 now + earliest)
        while step > self.totp.timecode(time.time()) + 1:
            time.sleep(0.5)
        self.last_step, self.last_code = step, self.totp.generate_otp(step)
        return self.last_code

    def wrong_code(self) -> str:
        """Six digits the server cannot accept now or in the next minute."""
        now = self.totp.timecode(time.time())
        valid = {self.totp.generate_otp(step) for step in range(now - 1, now + 3)}
        return next(code for code in (f"{n:06d}" for n in range(10)) if code not in valid)


def _set_up(journey: Journey, page: Page, name: str) -> tuple[Phone, list[str]]:
    """On the set-up page: add the key to the phone, confirm with its code, read the
    recovery codes (shown once, never cached)."""
    expect(page.get_by_role("heading", level=1)).to_have_text("Set up two-factor sign-in")
    expect(page.get_by_role("img", name="QR code that adds this account to an "
                                       "authenticator app")).to_be_visible()
    journey.check(f"{name} two-factor set-up")
    phone = Phone(page.locator("#totp-secret").inner_text())
    page.get_by_label("Code from the app").fill(phone.code(earliest=-1))
    with page.expect_response(lambda r: r.request.method == "POST"
                              and r.url.endswith("/client/profile/two-factor")) as answer:
        page.get_by_role("button", name="Turn on two-factor sign-in").click()
    assert answer.value.status == 200
    assert answer.value.headers["cache-control"] == "no-store"
    expect(page.get_by_role("heading", level=1)).to_have_text("Two-factor sign-in is on")
    codes = page.locator("#recovery-codes li").all_inner_texts()
    assert len(codes) == 10 and len(set(codes)) == 10
    journey.check(f"{name} recovery codes")
    return phone, codes


def _second_step(page: Page, code: str) -> None:
    field = page.get_by_label("Code", exact=True)
    field.fill(code)
    field.press("Enter")
    page.wait_for_load_state("load")


def _refused(journey: Journey, page: Page, message: str, name: str | None = None) -> None:
    expect(page).to_have_url(f"{journey.base_url}/auth/two-factor")
    expect(page.locator("#error-summary")).to_contain_text(message)
    expect(page.locator("#error-summary")).to_be_focused()
    expect(page.get_by_label("Code", exact=True)).to_have_attribute("aria-invalid", "true")
    if name:
        journey.check(name)


def test_a_client_signs_in_with_codes_and_an_administrator_resets_them(journey_factory,
                                                                      product):
    password = make_client(product, "tf-client")
    journey = journey_factory("client")
    page = journey.go("/auth/login")
    sign_in(journey, "tf-client", password)
    account_menu(page, "Profile")
    expect(page.get_by_text("Off. With it on, signing in also asks")).to_be_visible()
    journey.check("profile with two-factor off")
    page.get_by_role("link", name="Set up two-factor sign-in").click()
    phone, codes = _set_up(journey, page, "client")
    page.get_by_role("link", name="I saved them: back to the profile").click()
    expect(page.get_by_text("On since")).to_be_visible()
    page.get_by_role("link", name="Manage two-factor sign-in").click()
    expect(page.locator("#codes-left")).to_have_text("10")
    journey.check("manage two-factor sign-in")
    account_menu(page, "Sign out")

    # The password alone: the second step, and no other page opens meanwhile.
    sign_in(journey, "tf-client", password)
    expect(page).to_have_url(f"{product.url}/auth/two-factor")
    expect(page.get_by_role("heading", level=1)).to_have_text("Two-factor sign-in")
    journey.check("second sign-in step")
    journey.go("/client/")
    expect(page).to_have_url(f"{product.url}/auth/login?next=%2Fclient%2F")
    journey.go("/auth/two-factor")
    _second_step(page, phone.wrong_code())
    _refused(journey, page, "is not correct", "wrong code refused")
    _second_step(page, phone.code())
    expect(page).to_have_url(f"{product.url}/client/")
    account_menu(page, "Sign out")

    # The same code again is refused, though it is still in the window.
    sign_in(journey, "tf-client", password)
    _second_step(page, phone.last_code)
    _refused(journey, page, "was already used")
    # A recovery code signs in once.
    _second_step(page, codes[0])
    expect(page).to_have_url(f"{product.url}/client/")
    account_menu(page, "Sign out")
    sign_in(journey, "tf-client", password)
    _second_step(page, codes[0])
    _refused(journey, page, "this recovery code was already used")
    _second_step(page, phone.code())
    expect(page).to_have_url(f"{product.url}/client/")
    account_menu(page, "Profile")
    page.get_by_role("link", name="Manage two-factor sign-in").click()
    expect(page.locator("#codes-left")).to_have_text("9")
    account_menu(page, "Sign out")

    # The phone is lost: an administrator turns two-factor sign-in off for the client.
    desk = journey_factory("admin")
    desk_page = desk.go("/auth/login")
    sign_in(desk, "admin", product.admin_password)
    desk.go("/admin/users?q=tf-client")
    row = desk_page.get_by_role("row").filter(has_text="tf-client")
    expect(row.get_by_text("two-factor", exact=True)).to_be_visible()
    desk.check("user list with two-factor")
    desk_page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Reset two-factor").click()
    expect(desk_page.get_by_role("status").first).to_contain_text(
        "Two-factor sign-in of tf-client is off")
    expect(row.get_by_text("two-factor", exact=True)).to_have_count(0)
    sign_in(journey, "tf-client", password)
    expect(page).to_have_url(f"{product.url}/client/")


def test_administrators_are_held_at_set_up_while_required(journey_factory, product):
    token = admin_token(product)  # taken before the requirement: the cleanup needs one
    password = secrets.token_urlsafe(16)
    product.cli("users", "create", "--username", "tf-admin", "--email",
                "tf-admin@example.test", "--role", "admin", "--password-stdin", stdin=password)
    try:
        journey = journey_factory()
        page = journey.go("/auth/login")
        sign_in(journey, "tf-admin", password)
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Settings").click()
        journey.check("settings with the sign-in section")
        requirement = page.get_by_label("Require two-factor sign-in for administrators")
        requirement.check()
        page.get_by_role("button", name="Save sign-in settings").click()
        # This administrator has no second factor yet: held at its set-up.
        expect(page).to_have_url(f"{product.url}/client/profile/two-factor")
        expect(page.get_by_role("alert")).to_contain_text(
            "Administrators sign in with a second factor")
        journey.check("administrator held at set-up")
        for path in ("/admin/nodes", "/admin/settings", "/client/tokens"):
            journey.go(path)
            expect(page).to_have_url(f"{product.url}/client/profile/two-factor")
        # Scripts with tokens keep working.
        assert api(product, "GET", "/settings/security", {}, token) == {
            "require_admin_two_factor": True}

        # Signing in again leads to the set-up too, and enrolling frees the way.
        account_menu(page, "Sign out")
        sign_in(journey, "tf-admin", password)
        expect(page).to_have_url(f"{product.url}/client/profile/two-factor")
        phone, _ = _set_up(journey, page, "administrator")
        journey.go("/admin/settings")
        expect(page.get_by_label("Require two-factor sign-in for administrators")).to_be_checked()
        account_menu(page, "Sign out")
        sign_in(journey, "tf-admin", password)
        _second_step(page, phone.code())
        expect(page).to_have_url(f"{product.url}/admin/")
    finally:
        api(product, "PUT", "/settings/security", {"require_admin_two_factor": False}, token)
