"""Notification channels on the profile page: added, listed with their targets masked,
changed, tested and deleted through the forms; secrets never come back and another
user's channel answers 404."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.models import DeliveryStatus, NotificationChannel, User
from app.services import notifiers
from tests.pages import page_text

TOKEN = "123456:" + "T" * 35
NEW_TOKEN = "654321:" + "N" * 35


def add(client: FlaskClient, **fields: Any) -> Any:
    data = {"name": "phone", "kind": "telegram", "target": "123456789", "secret": TOKEN,
            "events": ["deployment.failed", "test"], "enabled": "y"}
    data.update(fields)
    return client.post("/client/profile/notifications",
                       data={k: v for k, v in data.items() if v is not None})


def stored(db: Any, owner: User) -> list[NotificationChannel]:
    db.session.rollback()  # requests share the test's session: look at what was committed
    return notifiers.list_channels(owner)


def test_a_channel_is_added_and_listed_masked_without_its_secret(
        db: Any, alice: User, alice_client: FlaskClient) -> None:
    answer = add(alice_client)
    assert answer.status_code == 302 and answer.headers["Location"].endswith(
        "/client/profile#notifications")
    [channel] = stored(db, alice)
    assert (channel.kind.value, channel.target, channel.secret) == ("telegram", "123456789",
                                                                    TOKEN)
    page = page_text(alice_client.get("/client/profile"))
    row = re.search(r'<table[^>]*id="channels".*?</table>', page, re.S)[0]
    assert "phone" in row and "Telegram" in row and "1*******9" in row
    assert "123456789" not in page and TOKEN not in page
    assert "deployment.failed, test" in row and "none yet" in row


def test_an_invalid_channel_is_shown_under_its_fields_and_nothing_is_stored(
        db: Any, alice: User, alice_client: FlaskClient) -> None:
    answer = add(alice_client, target="not a chat", secret="")
    assert answer.status_code == 422
    page = page_text(answer)
    assert re.search(r'id="target-error">.*?must be a chat id', page, re.S)
    assert re.search(r'id="secret-error">.*?is required', page, re.S)
    assert stored(db, alice) == []


def test_a_webhook_to_an_internal_address_is_refused_under_the_target(
        db: Any, app: Flask, alice: User, alice_client: FlaskClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(app.config, "BACKEND_ALLOWED_NETWORKS", "")
    answer = add(alice_client, kind="webhook", target="http://169.254.169.254/",
                 secret="s" * 24)
    assert answer.status_code == 422
    assert re.search(r'id="target-error">.*?is not allowed', page_text(answer), re.S)
    assert stored(db, alice) == []


def test_editing_changes_events_and_enabled_and_a_blank_secret_keeps_the_stored_one(
        db: Any, alice: User, alice_client: FlaskClient) -> None:
    add(alice_client)
    [channel] = stored(db, alice)
    url = f"/client/profile/notifications/{channel.id}"
    form = page_text(alice_client.get(url))
    assert TOKEN not in form and "123456789" not in form and "Leave blank to keep" in form
    answer = alice_client.post(url, data={"name": "phone", "events": ["test"], "secret": ""})
    assert answer.status_code == 302
    [channel] = stored(db, alice)
    assert (channel.enabled, channel.events, channel.secret) == (False, ["test"], TOKEN)
    alice_client.post(url, data={"name": "phone", "enabled": "y", "secret": NEW_TOKEN})
    [channel] = stored(db, alice)
    assert (channel.enabled, channel.events, channel.secret) == (True, [], NEW_TOKEN)


def test_a_test_message_is_recorded_and_its_delivery_shown_with_the_error(
        db: Any, alice: User, alice_client: FlaskClient) -> None:
    add(alice_client, kind="email", target="alice@mail.test", secret=None)
    [channel] = stored(db, alice)
    answer = alice_client.post(f"/client/profile/notifications/{channel.id}/test")
    assert answer.status_code == 302 and answer.headers["Location"].endswith(
        f"/client/profile/notifications/{channel.id}#deliveries")
    [delivery] = notifiers.list_deliveries(alice, channel.id)
    notifiers.wait(delivery.id)
    db.session.rollback()
    assert notifiers.list_deliveries(alice, channel.id)[0].status == DeliveryStatus.FAILED
    page = page_text(alice_client.get(f"/client/profile/notifications/{channel.id}"))
    deliveries = re.search(r'id="delivery-list".*?</table>', page, re.S)[0]
    assert "failed" in deliveries and "mail is not set up on this server" in deliveries
    assert "failed" in re.search(r'id="channels".*?</table>',
                                 page_text(alice_client.get("/client/profile")), re.S)[0]


def test_a_deleted_channel_is_gone(db: Any, alice: User, alice_client: FlaskClient) -> None:
    add(alice_client)
    [channel] = stored(db, alice)
    answer = alice_client.post(f"/client/profile/notifications/{channel.id}/delete")
    assert answer.status_code == 302
    assert stored(db, alice) == []
    assert "No channel yet." in page_text(alice_client.get("/client/profile"))


def test_client_cannot_reach_other_clients_channel_through_the_profile(
        db: Any, alice: User, bob: User, alice_client: FlaskClient) -> None:
    bobs = notifiers.create_channel(bob, notifiers.ChannelInput(
        name="bob", kind="email", target="bob@mail.test"))
    base = f"/client/profile/notifications/{bobs.id}"
    for method, url in (("GET", base), ("POST", base), ("POST", base + "/test"),
                        ("POST", base + "/delete")):
        answer = alice_client.open(url, method=method, data={"name": "mine", "events": []})
        assert answer.status_code == 404, (method, url)
    [channel] = stored(db, bob)
    assert (channel.name, channel.events) == ("bob", ["deployment.failed", "alert.firing",
                                                   "alert.resolved", "test"])
    assert notifiers.list_deliveries(bob, bobs.id) == []
