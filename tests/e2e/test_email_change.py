"""Changing one's e-mail address in a real browser: the link arrives at the product's
mail server (``mailbox``), is opened in the browser and confirmed; a second client
trying the same address reads the very same answer and changes nothing, while the
address's owner gets a warning without a link."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.e2e.conftest import Journey, account_menu, make_client, sign_in
from tests.smtp import SmtpServer

SENT = "We sent a link to {}; your address changes when you open it (within 24 hours)."


def ask_for(journey: Journey, address: str) -> str:
    """Type ``address`` as the new one on the profile; the answer the page gives."""
    page = journey.page
    account_menu(page, "Profile")
    page.get_by_label("New email").fill(address)
    page.get_by_role("button", name="Send confirmation link").click()
    status = page.get_by_role("status").first
    expect(status).to_contain_text("We sent a link to")
    return status.inner_text()


def test_a_client_confirms_a_new_address_by_the_mailed_link_and_no_one_learns_it_is_taken(
        journey_factory, product, mailbox: SmtpServer):
    new = "mia.new@example.test"
    mia = journey_factory("mia")
    mia.go("/auth/login")
    sign_in(mia, "mia", make_client(product, "mia"))
    page = mia.page
    account_menu(page, "Profile")
    expect(page.locator("#current-email")).to_have_text("mia@example.test")
    mia.check("profile with the address form")

    answer = ask_for(mia, new)
    assert answer == SENT.format(new)
    expect(page.locator("#current-email")).to_have_text("mia@example.test")
    mia.check("link sent")

    link = re.search(r"http://\S+", mailbox.wait_for(new).text)
    assert link, mailbox.wait_for(new).text
    page.goto(link.group(0))
    expect(page.locator("#new-email")).to_have_text(new)
    mia.check("confirm the new address")
    page.get_by_role("button", name="Confirm the new address").click()
    expect(page.get_by_role("status").first).to_have_text(f"Your e-mail address is now {new}.")
    expect(page.locator("#current-email")).to_have_text(new)
    mia.check("address changed")
    assert "now uses mia.new@example.test" in mailbox.wait_for("mia@example.test").text

    page.goto(link.group(0))  # a link works once
    expect(page.locator("#link-refused")).to_contain_text("This link can no longer be used")
    mia.check("spent link")

    # Another client tries mia's new address: the same words, nothing changes, and
    # the address's mailbox hears of it without a link.
    noa = journey_factory("noa")
    noa.go("/auth/login")
    sign_in(noa, "noa", make_client(product, "noa"))
    assert ask_for(noa, new) == SENT.format(new)
    noa.check("link sent for a taken address")
    expect(noa.page.locator("#current-email")).to_have_text("noa@example.test")
    warning = mailbox.wait_for(new, count=2)
    assert "already uses it, so nothing changed" in warning.text
    assert "http" not in warning.text
    noa.page.reload()
    expect(noa.page.locator("#current-email")).to_have_text("noa@example.test")
