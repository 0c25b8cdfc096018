"""Where a user's notices go (channels) and what became of each one (deliveries)."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import db
from app.models.base import TimestampMixin, enum_column, utcnow
from app.security import EncryptedText


class ChannelKind(enum.StrEnum):
    TELEGRAM = "telegram"
    EMAIL = "email"
    WEBHOOK = "webhook"


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class NotificationChannel(TimestampMixin, db.Model):
    """One destination of one user's notices.  ``target`` is what the kind addresses
    (a Telegram chat id, an e-mail address, a webhook URL) and ``secret`` what it signs
    in or signs with (a bot token, a webhook secret), encrypted at rest.  ``events`` is
    a list of event names, so a new kind of event is a new name, not a column."""

    __tablename__ = "notification_channels"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                          index=True)
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[ChannelKind] = mapped_column(enum_column(ChannelKind, name="channel_kind"))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    events: Mapped[list[str]] = mapped_column(JSON, default=list)
    target: Mapped[str] = mapped_column(String(2048))
    secret: Mapped[str | None] = mapped_column(EncryptedText, nullable=True)

    deliveries: Mapped[list[NotificationDelivery]] = relationship(
        back_populates="channel", cascade="all, delete-orphan", passive_deletes=True)


class NotificationDelivery(db.Model):
    """One notice sent (or being sent) to one channel.  ``reference`` names what the
    notice is about (``rollout:12``): one channel hears about one thing once."""

    __tablename__ = "notification_deliveries"
    __table_args__ = (UniqueConstraint("channel_id", "event", "reference"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    channel_id: Mapped[int] = mapped_column(
        ForeignKey("notification_channels.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(64))
    reference: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[DeliveryStatus] = mapped_column(
        enum_column(DeliveryStatus, name="delivery_status"), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(String(300), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                         nullable=True)

    channel: Mapped[NotificationChannel] = relationship(back_populates="deliveries")
