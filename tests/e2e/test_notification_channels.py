"""Notification channels in a real browser: a client adds a Telegram channel on the
profile page and sends it a test message, which reaches the product's Telegram
stand-in (``telegram``) masked, without any IP address, and shows as sent; a webhook
aimed at an internal address is refused under its field."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.e2e.conftest import TELEGRAM_TOKEN, Journey, account_menu, make_client, sign_in
from tests.notice_servers import FakeTelegram

IP = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b|\[?[0-9a-f]{0,4}:[0-9a-f]{0,4}:[0-9a-f:]*\]?",
                re.I)
CHAT_ID = "987654321"
# An address in the channel's name: the test message quotes the name, masked.
CHANNEL = "phone at 203.0.113.9"


def add_channel(journey: Journey, kind: str, target: str, secret: str) -> None:
    page = journey.page
    card = page.locator("#notifications")
    card.get_by_label("Name", exact=True).fill(CHANNEL)
    card.get_by_label("Kind").select_option(kind)
    card.get_by_label("Target").fill(target)
    card.get_by_label("Secret").fill(secret)
    card.get_by_role("button", name="Add channel").click()


def test_a_test_message_reaches_telegram_masked_and_shows_as_sent(
        journey_factory, product, telegram: FakeTelegram):
    tia = journey_factory("tia")
    tia.go("/auth/login")
    sign_in(tia, "tia", make_client(product, "tia"))
    page = tia.page
    account_menu(page, "Profile")
    expect(page.locator("#no-channels")).to_be_visible()
    tia.check("profile without channels")

    add_channel(tia, "telegram", CHAT_ID, TELEGRAM_TOKEN)
    expect(page.get_by_role("status").first).to_contain_text(f"Channel {CHANNEL} added.")
    row = page.locator("#channels tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("Telegram")
    expect(row).to_contain_text("9*******1")
    expect(row).to_contain_text("none yet")
    assert TELEGRAM_TOKEN not in page.content() and CHAT_ID not in page.content()
    tia.check("profile with a Telegram channel")

    before = len(telegram.received)
    row.get_by_role("button", name="Send test message").click()
    expect(page.get_by_role("status").first).to_contain_text("Test message on its way")
    [message] = telegram.wait_for(before + 1)[before:]
    assert message.path == f"/bot{TELEGRAM_TOKEN}/sendMessage"
    assert message.json["chat_id"] == CHAT_ID
    text = message.json["text"]
    assert "s**p.e*****e.com" in text and "shop.example.com" not in text
    assert "phone at [address]" in text and not IP.search(text), text

    deliveries = page.locator("#delivery-list tbody tr")
    for _ in range(40):  # the delivery is recorded as sent just after Telegram answers
        if deliveries.first.get_by_text("sent", exact=True).count():
            break
        page.wait_for_timeout(250)
        page.reload()
    expect(deliveries).to_have_count(1)
    expect(deliveries.first).to_contain_text("sent")
    expect(deliveries.first).to_contain_text("test")
    tia.check("channel with its test message sent")
    account_menu(page, "Profile")
    expect(page.locator("#channels tbody tr")).to_contain_text("sent")


def test_a_webhook_to_an_internal_address_is_refused_under_its_field(
        journey_factory, product):
    uma = journey_factory("uma")
    uma.go("/auth/login")
    sign_in(uma, "uma", make_client(product, "uma"))
    page = uma.page
    account_menu(page, "Profile")
    add_channel(uma, "webhook", "http://169.254.169.254/", "s" * 24)
    expect(page.locator("#target-error")).to_contain_text("is not allowed")
    expect(page.locator("#error-summary")).to_contain_text("Target")
    expect(page.locator("#no-channels")).to_be_visible()
    uma.check("webhook refused")
