"""Users' notification channels and the deliveries of notices to them.

Channels belong to one user: every read goes through the tenancy helpers, so another
client's channel is "not found".  Sending never holds the request (or the rollout)
that caused it: a delivery row is written first, then the executor tries it in the
background, ``attempts`` times with growing pauses, and records how it ended."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.errors import ValidationError
from app.executor import background, executor
from app.extensions import db
from app.models import (
    ChannelKind,
    DeliveryStatus,
    NotificationChannel,
    NotificationDelivery,
    Role,
    User,
)
from app.models.base import utcnow
from app.services import audit
from app.services.common import get_scoped
from app.services.notifiers.base import DeliveryFailed, Notice, Notifier
from app.services.notifiers.email import EmailNotifier
from app.services.notifiers.masking import mask
from app.services.notifiers.telegram import TelegramNotifier
from app.services.notifiers.webhook import WebhookNotifier

log = logging.getLogger(__name__)

#: Every kind of channel, by the value of ``NotificationChannel.kind``.
NOTIFIERS: dict[str, Notifier] = {n.kind: n for n in
                                  (TelegramNotifier(), EmailNotifier(), WebhookNotifier())}
#: The events a channel can receive, with what people read in the forms.
EVENTS: dict[str, str] = {
    "deployment.failed": "a deployment failed",
    "alert.firing": "an alert fires (and reminds while it keeps firing)",
    "alert.resolved": "an alert is resolved",
    "test": "test messages",
}
DEFAULT_EVENTS = ("deployment.failed", "alert.firing", "alert.resolved", "test")
MAX_CHANNELS = 20
#: Pauses before the second and later attempts of one delivery (seconds).
RETRY_DELAYS = (2.0, 8.0)
TEST_EVENT = "test"
WORK_KIND = "notice"


@dataclass(frozen=True)
class ChannelInput:
    """What a form or the API gives; ``None`` leaves a field as it is on update."""

    name: str | None = None
    kind: str | None = None
    target: str | None = None
    secret: str | None = None
    enabled: bool | None = None
    events: list[str] | None = None


@dataclass(frozen=True)
class ChannelSummary:
    """A channel as its owner's list shows it: the target masked (see each notifier's
    ``shown_target``) and its latest delivery, if any."""

    channel: NotificationChannel
    kind_label: str
    shown_target: str
    last_delivery: NotificationDelivery | None


# ----------------------------------------------------------------------------- channels

def list_channels(actor: User) -> list[NotificationChannel]:
    """The actor's own channels (administrators' too: a profile is one's own)."""
    return list(db.session.scalars(select(NotificationChannel)
                                   .where(NotificationChannel.owner_id == actor.id)
                                   .order_by(NotificationChannel.id)))


def channel_summaries(actor: User) -> list[ChannelSummary]:
    """The actor's channels with what their list shows of each."""
    latest = (select(func.max(NotificationDelivery.id)).join(NotificationChannel)
              .where(NotificationChannel.owner_id == actor.id)
              .group_by(NotificationDelivery.channel_id))
    last = {d.channel_id: d for d in db.session.scalars(
        select(NotificationDelivery).where(NotificationDelivery.id.in_(latest)))}
    return [_summary(channel, last.get(channel.id)) for channel in list_channels(actor)]


def channel_summary(actor: User, channel_id: int) -> ChannelSummary:
    """One of the actor's channels as its list shows it."""
    channel = get_channel(actor, channel_id)
    last = db.session.scalars(select(NotificationDelivery)
                              .where(NotificationDelivery.channel_id == channel.id)
                              .order_by(NotificationDelivery.id.desc()).limit(1)).first()
    return _summary(channel, last)


def _summary(channel: NotificationChannel,
             last: NotificationDelivery | None) -> ChannelSummary:
    notifier = NOTIFIERS[channel.kind.value]
    return ChannelSummary(channel, notifier.label, notifier.shown_target(channel.target), last)


def get_channel(actor: User, channel_id: int) -> NotificationChannel:
    channel: NotificationChannel = get_scoped(NotificationChannel, channel_id, actor,
                                              "notification channel")
    return channel


def create_channel(actor: User, data: ChannelInput) -> NotificationChannel:
    """A new channel of the actor's.  :raises ValidationError: per field."""
    if data.kind not in NOTIFIERS:
        raise ValidationError("invalid channel", {"kind": "must be one of "
                                                  + ", ".join(NOTIFIERS)})
    count = len(list_channels(actor))
    if count >= MAX_CHANNELS:
        raise ValidationError("too many channels",
                              {"name": f"at most {MAX_CHANNELS} channels per user"})
    channel = NotificationChannel(owner_id=actor.id, kind=ChannelKind(data.kind),
                                  enabled=True, events=list(DEFAULT_EVENTS))
    _apply(channel, data, creating=True)
    db.session.add(channel)
    db.session.flush()
    audit.record(actor, "notification_channel.create", "notification_channel", channel.id,
                 {"kind": channel.kind.value, "name": channel.name})
    db.session.commit()
    return channel


def update_channel(actor: User, channel_id: int, data: ChannelInput) -> NotificationChannel:
    """Change a channel; its kind stays, and its secret unless a new one is given."""
    channel = get_channel(actor, channel_id)
    if data.kind is not None and data.kind != channel.kind.value:
        raise ValidationError("invalid channel",
                              {"kind": "cannot change: add a channel of the other kind"})
    _apply(channel, data, creating=False)
    audit.record(actor, "notification_channel.update", "notification_channel", channel.id,
                 {"enabled": channel.enabled, "events": channel.events})
    db.session.commit()
    return channel


def delete_channel(actor: User, channel_id: int) -> None:
    channel = get_channel(actor, channel_id)
    audit.record(actor, "notification_channel.delete", "notification_channel", channel.id,
                 {"kind": channel.kind.value, "name": channel.name})
    db.session.delete(channel)
    db.session.commit()


def _apply(channel: NotificationChannel, data: ChannelInput, *, creating: bool) -> None:
    notifier = NOTIFIERS[channel.kind.value]
    errors: dict[str, str] = {}
    if data.name is not None or creating:
        name = (data.name or "").strip()
        if not name or len(name) > 64 or any(ord(ch) < 32 for ch in name):
            errors["name"] = "is required (at most 64 characters)"
        channel.name = name
    if data.target is not None or creating:
        try:
            channel.target = notifier.clean_target(data.target or "")
        except ValueError as exc:
            errors["target"] = str(exc)
    if notifier.secret_label and (data.secret or creating):
        try:
            channel.secret = notifier.clean_secret(data.secret or "")
        except ValueError as exc:
            errors["secret"] = str(exc) if data.secret else "is required"
    if data.enabled is not None:
        channel.enabled = bool(data.enabled)
    if data.events is not None:
        unknown = [event for event in data.events if event not in EVENTS]
        if unknown:
            errors["events"] = "unknown events: " + ", ".join(sorted(unknown))[:200]
        channel.events = sorted(set(data.events))
    if errors:
        db.session.rollback()
        raise ValidationError("invalid channel", errors)


# ---------------------------------------------------------------------------- deliveries

def list_deliveries(actor: User, channel_id: int, limit: int = 20) -> list[NotificationDelivery]:
    """The channel's latest deliveries, newest first."""
    channel = get_channel(actor, channel_id)
    return list(db.session.scalars(select(NotificationDelivery)
                                   .where(NotificationDelivery.channel_id == channel.id)
                                   .order_by(NotificationDelivery.id.desc()).limit(limit)))


def send_test(actor: User, channel_id: int) -> NotificationDelivery:
    """Send a test notice to one of the actor's channels, in the background."""
    channel = get_channel(actor, channel_id)
    notice = Notice(TEST_EVENT, "Test message",
                    f"This test message from the control plane reached {actor.username}'s "
                    f"channel \"{channel.name}\". Notices never show IP addresses and "
                    "mask domain names like this: shop.example.com")
    delivery = NotificationDelivery(channel_id=channel.id, event=TEST_EVENT)
    db.session.add(delivery)
    audit.record(actor, "notification_channel.test", "notification_channel", channel.id)
    db.session.commit()
    _start(delivery.id, notice)
    return delivery


#: Deliveries written in a transaction and not started yet, with what each one says.
Queued = list[tuple[int, Notice]]


def notify(event: str, reference: str, owner_id: int | None, owner_notice: Notice,
           admin_notice: Notice) -> list[int]:
    """Send ``event`` once per subscribed, enabled channel: the owner's channels get
    ``owner_notice``, administrators' ``admin_notice``.  A channel that heard about
    ``reference`` already is skipped (the database's unique key makes sure).

    :returns: the ids of the deliveries started."""
    queued = queue_notice(event, reference, owner_id, owner_notice, admin_notice)
    db.session.commit()
    start_queued(queued)
    return [delivery_id for delivery_id, _ in queued]


def queue_notice(event: str, reference: str, owner_id: int | None, owner_notice: Notice,
                 admin_notice: Notice) -> Queued:
    """:func:`notify`'s deliveries, written in the caller's transaction and not yet
    sent: a caller that records what it notified in the same transaction commits once,
    then calls :func:`start_queued`, so the record and the deliveries stand or fall together."""
    admins = select(User.id).where(User.role == Role.ADMIN, User.is_active.is_(True))
    owners = [owner_id] if owner_id is not None else []
    channels = db.session.scalars(select(NotificationChannel).where(
        NotificationChannel.enabled.is_(True),
        NotificationChannel.owner_id.in_(owners) | NotificationChannel.owner_id.in_(admins))
        .order_by(NotificationChannel.id)).all()
    admin_ids = set(db.session.scalars(admins))
    queued: Queued = []
    for channel in channels:
        if event not in (channel.events or []):
            continue
        notice = admin_notice if channel.owner_id in admin_ids else owner_notice
        delivery = NotificationDelivery(channel_id=channel.id, event=event, reference=reference)
        try:
            with db.session.begin_nested():
                db.session.add(delivery)
        except IntegrityError:
            continue
        queued.append((delivery.id, notice))
    return queued


def start_queued(queued: Queued) -> None:
    """Send committed deliveries of :func:`queue_notice` in the background."""
    for delivery_id, notice in queued:
        _start(delivery_id, notice)


def wait(delivery_id: int, timeout: float = 30.0) -> None:
    """Wait for a delivery's background work (the CLI and the tests)."""
    executor.join(WORK_KIND, delivery_id, timeout)


def _start(delivery_id: int, notice: Notice) -> None:
    masked = Notice(notice.event, mask(notice.subject), mask(notice.text))
    executor.submit(WORK_KIND, delivery_id, deliver, delivery_id, masked)


@background(WORK_KIND)
def deliver(delivery_id: int, notice: Notice) -> None:
    """Try one delivery until it is sent, refused for good, or out of attempts;
    record each attempt and the reason of the last failure."""
    delivery = db.session.get(NotificationDelivery, delivery_id)
    if delivery is None:
        return
    channel = delivery.channel
    notifier = NOTIFIERS[channel.kind.value]
    while True:
        delivery.attempts += 1
        db.session.commit()
        try:
            notifier.send(channel, notice)
        except DeliveryFailed as exc:
            delivery.error = exc.reason[:300]
            log.info("delivery %s to channel %s, attempt %d: %s", delivery.id, channel.id,
                     delivery.attempts, exc.reason)
            if exc.retry and delivery.attempts < notifier.attempts:
                db.session.commit()
                time.sleep(RETRY_DELAYS[min(delivery.attempts, len(RETRY_DELAYS)) - 1])
                continue
            delivery.status = DeliveryStatus.FAILED
        else:
            delivery.status = DeliveryStatus.SENT
            delivery.error = ""
        delivery.finished_at = utcnow()
        db.session.commit()
        return


def channel_to_dict(channel: NotificationChannel) -> dict[str, Any]:
    """What the owner sees of a channel: everything but its secret."""
    return {"id": channel.id, "name": channel.name, "kind": channel.kind.value,
            "target": channel.target, "enabled": channel.enabled,
            "events": list(channel.events or []), "has_secret": bool(channel.secret),
            "created_at": channel.created_at}

