"""Notification channels against real receivers on loopback: a Telegram Bot API
stand-in, a real SMTP server (aiosmtpd) and a webhook receiver that checks
signatures.  Every notice is searched for IP addresses and unmasked names."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select, text

from app.errors import NotFound, ValidationError
from app.models import (
    DeliveryStatus,
    DeploymentStatus,
    NodeDeployment,
    NotificationChannel,
    NotificationDelivery,
    User,
)
from app.services import notifiers
from app.services.notifiers import ChannelInput, channels
from tests import factories
from tests.notice_servers import IP, FakeTelegram, WebhookReceiver, notice_fixtures
from tests.processes import free_port
from tests.smtp import SmtpServer

TOKEN = "123456:" + "A" * 35
SECRET = "s" * 24
DOMAIN = "shop.example.com"


telegram, receiver, smtp, outside = notice_fixtures(
    ("127.0.0.81", "127.0.0.82", "127.0.0.83"), token=TOKEN, secret=SECRET)


def add(user: User, kind: str, target: str, secret: str | None = None,
        events: list[str] | None = None) -> NotificationChannel:
    return notifiers.create_channel(user, ChannelInput(name=f"my {kind}", kind=kind,
                                                       target=target, secret=secret,
                                                       events=events))


def sent(db: Any, user: User, channel: NotificationChannel) -> NotificationDelivery:
    delivery = notifiers.send_test(user, channel.id)
    notifiers.wait(delivery.id)
    db.session.expire_all()
    return db.session.get(NotificationDelivery, delivery.id)


def assert_masked(notice: str) -> None:
    assert not IP.search(notice), notice
    assert "example" not in notice and "shop" not in notice, notice


def test_a_telegram_channel_gets_a_masked_test_message_and_keeps_its_token_encrypted(
        db: Any, alice: User, telegram: FakeTelegram) -> None:
    channel = add(alice, "telegram", "-1001234", TOKEN)
    raw = db.session.execute(text("SELECT secret FROM notification_channels")).scalar_one()
    assert TOKEN not in raw
    delivery = sent(db, alice, channel)
    assert (delivery.status, delivery.attempts, delivery.error) == (DeliveryStatus.SENT, 1, "")
    [request] = telegram.received
    assert request.json["chat_id"] == "-1001234" and request.json["parse_mode"] == "HTML"
    assert "s**p.e*****e.com" in request.json["text"]
    assert_masked(request.json["text"])


def test_a_wrong_bot_token_is_a_failure_its_owner_can_act_on(db: Any, alice: User) -> None:
    channel = add(alice, "telegram", "@ops_channel", "999:" + "B" * 35)
    delivery = sent(db, alice, channel)
    assert delivery.status == DeliveryStatus.FAILED and delivery.attempts == 1
    assert "bot token" in delivery.error and "B" * 35 not in delivery.error


def test_long_telegram_notices_are_split_in_order(db: Any, alice: User,
                                                  telegram: FakeTelegram) -> None:
    add(alice, "telegram", "42", TOKEN, events=["deployment.failed"])
    lines = [f"line {n} <&> of a long notice" for n in range(400)]
    notifiers.notify("deployment.failed", "long", alice.id,
                     notifiers.Notice("deployment.failed", "Long", "\n".join(lines)),
                     notifiers.Notice("deployment.failed", "Long", "\n".join(lines)))
    [delivery_id] = db.session.scalars(select(NotificationDelivery.id))
    notifiers.wait(delivery_id)
    texts = telegram.texts()
    assert len(texts) >= 3 and all(len(t) <= 4096 for t in texts)
    joined = "".join(texts)
    assert joined.index("line 0 &lt;&amp;&gt;") < joined.index("line 399 ")
    assert all(f"line {n} &lt;" in joined for n in range(400))


def test_an_email_channel_sends_through_the_smtp_server(db: Any, alice: User,
                                                        smtp: SmtpServer) -> None:
    channel = add(alice, "email", "ops@mail.test")
    assert sent(db, alice, channel).status == DeliveryStatus.SENT
    message = smtp.wait_for("ops@mail.test")
    assert message.message["Subject"] == "Test message"
    assert_masked(message.text)


def test_a_webhook_is_signed_with_the_channels_secret(db: Any, alice: User,
                                                      receiver: WebhookReceiver) -> None:
    channel = add(alice, "webhook", f"{receiver.url}/hook", SECRET)
    assert sent(db, alice, channel).status == DeliveryStatus.SENT
    [request] = receiver.received
    assert receiver.valid == [True]
    assert request.json["event"] == "test"
    assert int(request.headers["X-RPCC-Timestamp"]) == request.json["timestamp"]
    assert_masked(request.body.decode())


def test_a_webhook_that_is_down_is_retried_then_recorded_as_failed(db: Any,
                                                                   alice: User) -> None:
    channel = add(alice, "webhook", f"http://127.0.0.84:{free_port('127.0.0.84')}/", SECRET)
    delivery = sent(db, alice, channel)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, 3)
    assert delivery.error == "the webhook cannot be reached (connection failed)"
    assert delivery.finished_at is not None


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data",
                                 "http://[::ffff:169.254.169.254]/", "http://0x7f000001/",
                                 "ftp://hooks.example.com/", "http://user:pw@hooks.example.com/"])
def test_a_webhook_to_an_internal_address_is_refused_when_saved(
        db: Any, alice: User, app: Flask, monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setitem(app.config, "BACKEND_ALLOWED_NETWORKS", "")
    with pytest.raises(ValidationError) as refused:
        add(alice, "webhook", url, SECRET)
    assert "target" in refused.value.fields
    assert db.session.scalar(select(NotificationChannel.id)) is None


def test_a_webhook_whose_host_became_internal_is_refused_when_sent(
        db: Any, alice: User, app: Flask, monkeypatch: pytest.MonkeyPatch,
        receiver: WebhookReceiver) -> None:
    channel = add(alice, "webhook", f"{receiver.url}/hook", SECRET)
    monkeypatch.setitem(app.config, "BACKEND_ALLOWED_NETWORKS", "")
    delivery = sent(db, alice, channel)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, 1)
    assert "is not allowed" in delivery.error
    assert receiver.received == []


def test_client_cannot_see_or_test_other_clients_channel(db: Any, alice: User,
                                                         bob: User) -> None:
    channel = add(alice, "email", "alice@mail.test")
    for action in (notifiers.get_channel, notifiers.send_test, notifiers.list_deliveries,
                   notifiers.delete_channel):
        with pytest.raises(NotFound):
            action(bob, channel.id)
    with pytest.raises(NotFound):
        notifiers.update_channel(bob, channel.id, ChannelInput(enabled=False))
    assert notifiers.list_channels(bob) == []


def test_a_secret_is_kept_when_an_update_does_not_give_one(db: Any, alice: User) -> None:
    channel = add(alice, "webhook", "http://127.0.0.82/hook", SECRET)
    notifiers.update_channel(alice, channel.id, ChannelInput(enabled=False,
                                                             events=["deployment.failed"]))
    db.session.expire_all()
    again = db.session.get(NotificationChannel, channel.id)
    assert (again.secret, again.enabled, again.events) == (SECRET, False,
                                                           ["deployment.failed"])
    with pytest.raises(ValidationError) as refused:
        notifiers.update_channel(alice, channel.id, ChannelInput(events=["disk.full"]))
    assert "events" in refused.value.fields


def test_one_notice_per_failed_rollout_for_the_owner_and_the_administrators(
        db: Any, alice: User, bob: User, admin: User, telegram: FakeTelegram,
        receiver: WebhookReceiver, smtp: SmtpServer) -> None:
    site = factories.make_site(alice, DOMAIN)
    add(alice, "telegram", "1", TOKEN)
    add(alice, "email", "alice@mail.test")
    add(alice, "webhook", f"{receiver.url}/alice", SECRET)
    add(alice, "email", "quiet@mail.test", events=["test"])
    add(bob, "email", "bob@mail.test")
    add(admin, "email", "admin@mail.test")
    rollout = factories.make_rollout(site)
    rollout.status = DeploymentStatus.FAILED
    db.session.add(NodeDeployment(rollout_id=rollout.id, site_id=site.id, node_name="edge-7",
                                  status=DeploymentStatus.FAILED,
                                  error="test: nginx: [emerg] host not found in 10.9.8.7 "
                                        "in /etc/nginx/rpcc/shop.example.com.conf:3"))
    site.last_deploy_error = ("edge-7: test: nginx: [emerg] host not found in 10.9.8.7 in "
                              "/etc/nginx/rpcc/shop.example.com.conf:3")
    db.session.commit()
    for _ in range(2):  # concluded twice (a retried job): still one notice each
        notifiers.rollout_concluded(rollout)
        channels.executor.join("rollout-notice", rollout.id, 10)
    deliveries = db.session.scalars(select(NotificationDelivery)).all()
    assert len(deliveries) == 4
    for delivery in deliveries:
        notifiers.wait(delivery.id)
    db.session.expire_all()
    assert {d.status for d in db.session.scalars(select(NotificationDelivery))} == {
        DeliveryStatus.SENT}
    client_notices = [*telegram.texts(), smtp.wait_for("alice@mail.test").text,
                      receiver.received[0].json["text"]]
    admin_notice = smtp.wait_for("admin@mail.test").text
    assert smtp.to("bob@mail.test") == [] and smtp.to("quiet@mail.test") == []
    for notice in [*client_notices, admin_notice]:
        assert_masked(notice)
        assert "/etc" not in notice
    for notice in client_notices:
        assert "edge-7" not in notice and "s**p.e*****e.com" in notice
    assert "edge-7" in admin_notice
