"""Alert rules set by administrators, the alerts they raise, and silences.

An alert is one rule's condition holding for one subject (a node, a site, a pool or a
rollout).  It moves pending → firing → resolved; every move is a transition row, and a
notice goes out for a transition exactly once (``notified_at``)."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Boolean, DateTime, Float, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import db
from app.models.base import TimestampMixin, enum_column, utcnow


class AlertKind(enum.StrEnum):
    CPU = "cpu"
    MEMORY = "memory"
    DISK = "disk"
    LOAD = "load"
    NODE_UNREACHABLE = "node_unreachable"
    PROXY_DOWN = "proxy_down"
    SITE_DOWN = "site_down"
    CERT_EXPIRING = "cert_expiring"
    CERT_MISMATCH = "cert_mismatch"
    DEPLOYMENT_FAILED = "deployment_failed"
    DRIFT = "drift"
    NS_MISMATCH = "ns_mismatch"


class AlertSeverity(enum.StrEnum):
    WARNING = "warning"
    CRITICAL = "critical"


class AlertState(enum.StrEnum):
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


class SubjectKind(enum.StrEnum):
    NODE = "node"
    SITE = "site"
    POOL = "pool"
    ROLLOUT = "rollout"


class AlertRule(TimestampMixin, db.Model):
    """``threshold`` means what the kind measures (percent, load, days, nodes);
    ``duration_seconds`` is how long the condition must hold before the alert fires;
    ``pool_id`` narrows the rule to one pool."""

    __tablename__ = "alert_rules"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[AlertKind] = mapped_column(enum_column(AlertKind, name="alert_kind"))
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    duration_seconds: Mapped[int] = mapped_column(Integer, default=0)
    severity: Mapped[AlertSeverity] = mapped_column(
        enum_column(AlertSeverity, name="alert_severity"), default=AlertSeverity.WARNING)
    pool_id: Mapped[int | None] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE"),
                                                nullable=True, index=True)
    renotify_seconds: Mapped[int] = mapped_column(Integer, default=0)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)


class Alert(db.Model):
    """``node_id`` / ``site_id`` are set whenever the subject is, or belongs to, a node
    or a site, so silences and owners' views filter without joins."""

    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_rule_subject", "rule_id", "subject_kind", "subject_id"),
                      Index("ix_alerts_state", "state"),
                      # One open alert per rule and subject, even when two evaluations
                      # overlap: the second one's insert fails instead of duplicating.
                      Index("uq_alerts_open_subject", "rule_id", "subject_kind", "subject_id",
                            unique=True, sqlite_where=text("state != 'resolved'"),
                            postgresql_where=text("state != 'resolved'")))

    id: Mapped[int] = mapped_column(primary_key=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("alert_rules.id", ondelete="CASCADE"))
    subject_kind: Mapped[SubjectKind] = mapped_column(
        enum_column(SubjectKind, name="alert_subject_kind"))
    subject_id: Mapped[int] = mapped_column(Integer)
    node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"),
                                                nullable=True, index=True)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"),
                                                nullable=True, index=True)
    pool_id: Mapped[int | None] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE"),
                                                nullable=True, index=True)
    state: Mapped[AlertState] = mapped_column(enum_column(AlertState, name="alert_state"),
                                              default=AlertState.PENDING)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    summary: Mapped[str] = mapped_column(String(500), default="")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    fired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                         nullable=True)
    last_notified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                              nullable=True)
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                             nullable=True)
    acknowledged_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True)

    rule: Mapped[AlertRule] = relationship()
    transitions: Mapped[list[AlertTransition]] = relationship(
        back_populates="alert", cascade="all, delete-orphan", passive_deletes=True,
        order_by="AlertTransition.id")


class AlertTransition(db.Model):
    """One move of one alert; ``silenced`` says a maintenance window kept its notice
    back, ``notified_at`` that the notice went out."""

    __tablename__ = "alert_transitions"
    # The notices a silence holds back, which each evaluation looks at again: few rows
    # however long the history grows.
    __table_args__ = (Index("ix_alert_transitions_held", "alert_id",
                            sqlite_where=text("silenced = 1 AND notified_at IS NULL"),
                            postgresql_where=text("silenced AND notified_at IS NULL")),)

    id: Mapped[int] = mapped_column(primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"),
                                          index=True)
    from_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_state: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    silenced: Mapped[bool] = mapped_column(Boolean, default=False)
    notified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                         nullable=True)

    alert: Mapped[Alert] = relationship(back_populates="transitions")


class Silence(TimestampMixin, db.Model):
    """A maintenance window: alerts about the node, the pool (and its nodes and sites)
    or the site raise no notice between ``starts_at`` and ``ends_at``."""

    __tablename__ = "silences"

    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"),
                                                nullable=True)
    pool_id: Mapped[int | None] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE"),
                                                nullable=True)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"),
                                                nullable=True)
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str] = mapped_column(String(200), default="")
    created_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
