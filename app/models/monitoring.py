"""What the control plane observes: node metrics, site checks and nameserver checks.

Metrics and site checks are kept at several resolutions in one table each
(``period`` 0 is a raw sample, otherwise the bucket length in seconds), so a chart
over an hour and one over a year read the same columns and retention is one delete
per resolution."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db
from app.models.base import TimestampMixin, enum_column, utcnow

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets 64 bits for tables
# that take a row per node or site per minute.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class NodeMetric(db.Model):
    """One node's figures: a raw sample (``period`` 0) or the average of ``samples``
    raw samples over ``period`` seconds starting at ``at``.  ``None`` is "not
    reported", never zero."""

    __tablename__ = "node_metrics"
    __table_args__ = (Index("ix_node_metrics_node_period_at", "node_id", "period", "at"),
                      Index("ix_node_metrics_period_at", "period", "at"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    period: Mapped[int] = mapped_column(Integer, default=0)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    samples: Mapped[int] = mapped_column(Integer, default=1)
    cpu_percent: Mapped[float | None] = mapped_column(Float, nullable=True)
    mem_percent: Mapped[float | None] = mapped_column(Float, nullable=True)
    swap_percent: Mapped[float | None] = mapped_column(Float, nullable=True)
    load1: Mapped[float | None] = mapped_column(Float, nullable=True)
    load5: Mapped[float | None] = mapped_column(Float, nullable=True)
    load15: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The fullest file system's use, and every file system: [{"mount", "percent",
    # "used", "size"}].
    disk_percent: Mapped[float | None] = mapped_column(Float, nullable=True)
    filesystems: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    net_rx_bps: Mapped[float | None] = mapped_column(Float, nullable=True)
    net_tx_bps: Mapped[float | None] = mapped_column(Float, nullable=True)
    uptime_seconds: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The proxy's own figures (nginx stub_status, Caddy's metrics endpoint).
    connections: Mapped[float | None] = mapped_column(Float, nullable=True)
    requests_per_second: Mapped[float | None] = mapped_column(Float, nullable=True)


class SiteCheck(db.Model):
    """One request to a site through one node (``period`` 0), or ``checks`` of them
    summed over ``period`` seconds from ``at``.  The certificate fields say what the
    node actually served."""

    __tablename__ = "site_checks"
    __table_args__ = (Index("ix_site_checks_site_period_at", "site_id", "period", "at"),
                      Index("ix_site_checks_period_at", "period", "at"),
                      Index("ix_site_checks_node_id", "node_id"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    period: Mapped[int] = mapped_column(Integer, default=0)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    checks: Mapped[int] = mapped_column(Integer, default=1)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    response_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str] = mapped_column(String(200), default="")
    cert_not_after: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                            nullable=True)
    # SHA-256 of the served certificate, and whether it is the one the control plane
    # holds for the site (None when the check was over plain HTTP).
    cert_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cert_matches: Mapped[bool | None] = mapped_column(Boolean, nullable=True)


class NameserverStatus(enum.StrEnum):
    OK = "ok"
    MISMATCH = "mismatch"
    ERROR = "error"


class NameserverCheck(db.Model):
    """The last NS lookup of one of a site's names: what the resolvers answered next
    to what the administrators expect."""

    __tablename__ = "nameserver_checks"
    __table_args__ = (UniqueConstraint("site_id", "hostname"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"),
                                         index=True)
    hostname: Mapped[str] = mapped_column(String(253))
    zone: Mapped[str] = mapped_column(String(253), default="")
    status: Mapped[NameserverStatus] = mapped_column(
        enum_column(NameserverStatus, name="nameserver_status"))
    expected: Mapped[list[str]] = mapped_column(JSON, default=list)
    found: Mapped[list[str]] = mapped_column(JSON, default=list)
    error: Mapped[str] = mapped_column(String(300), default="")
    checked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ZoneNameservers(TimestampMixin, db.Model):
    """The nameservers administrators expect for one zone, outranking the global list
    in Settings."""

    __tablename__ = "zone_nameservers"

    id: Mapped[int] = mapped_column(primary_key=True)
    zone: Mapped[str] = mapped_column(String(253), unique=True)
    nameservers: Mapped[list[str]] = mapped_column(JSON, default=list)
