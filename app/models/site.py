"""A client's site: its names, backends and every proxy setting."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import db
from app.models.base import TimestampMixin, enum_column, utcnow
from app.models.node import Pool
from app.models.user import User

if TYPE_CHECKING:
    from app.models.certificate import Certificate


class BackendProtocol(enum.StrEnum):
    HTTP = "http"
    HTTPS = "https"


class SslMode(enum.StrEnum):
    NONE = "none"
    SELF_SIGNED = "self_signed"
    LETSENCRYPT = "letsencrypt"
    CUSTOM = "custom"


class WafLevel(enum.StrEnum):
    OFF = "off"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class GeoMode(enum.StrEnum):
    OFF = "off"
    ALLOW = "allow"
    DENY = "deny"


class SiteStatus(enum.StrEnum):
    PENDING = "pending"
    DEPLOYED = "deployed"
    PARTIAL = "partial"
    FAILED = "failed"


class Site(TimestampMixin, db.Model):
    __tablename__ = "sites"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), index=True)
    domain: Mapped[str] = mapped_column(String(253), unique=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("pools.id", ondelete="RESTRICT"), index=True)
    backend_protocol: Mapped[BackendProtocol] = mapped_column(
        enum_column(BackendProtocol, name="site_backend_protocol"), default=BackendProtocol.HTTP
    )
    ssl_mode: Mapped[SslMode] = mapped_column(
        enum_column(SslMode, name="site_ssl_mode"), default=SslMode.NONE
    )
    # How an ACME certificate is validated: "http-01" (token on every node of the
    # pool) or "dns-01" (TXT record through the zone's DNS provider).
    acme_challenge: Mapped[str] = mapped_column(String(16), default="http-01",
                                                server_default="http-01")
    force_https: Mapped[bool] = mapped_column(Boolean, default=False)
    hsts: Mapped[bool] = mapped_column(Boolean, default=False)
    http2: Mapped[bool] = mapped_column(Boolean, default=True)
    websocket: Mapped[bool] = mapped_column(Boolean, default=False)
    waf_level: Mapped[WafLevel] = mapped_column(
        enum_column(WafLevel, name="site_waf_level"), default=WafLevel.OFF
    )
    cache_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    cache_ttl: Mapped[int] = mapped_column(Integer, default=300)
    geo_mode: Mapped[GeoMode] = mapped_column(
        enum_column(GeoMode, name="site_geo_mode"), default=GeoMode.OFF
    )
    geo_countries: Mapped[list[str]] = mapped_column(JSON, default=list)
    ip_allow: Mapped[list[str]] = mapped_column(JSON, default=list)
    ip_deny: Mapped[list[str]] = mapped_column(JSON, default=list)
    rate_limit_rps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rate_limit_burst: Mapped[int] = mapped_column(Integer, default=0)
    headers: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    blocked: Mapped[bool] = mapped_column(Boolean, default=False)
    blocked_reason: Mapped[str] = mapped_column(String(500), default="")
    status: Mapped[SiteStatus] = mapped_column(
        enum_column(SiteStatus, name="site_status"), default=SiteStatus.PENDING
    )
    # Incremented on every change; rendered into config headers.
    config_version: Mapped[int] = mapped_column(Integer, default=1)
    # "deployed on X of Y nodes" after the last rollout, and why not on all.
    deployed_nodes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    target_nodes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_deploy_error: Mapped[str] = mapped_column(Text, default="", server_default="")
    last_deployed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                              nullable=True)
    # The settings of the last version every node took (a SiteSpec as JSON, without
    # the certificate): what a node keeps serving when a newer version is set aside.
    accepted_spec: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    accepted_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # A version a node refused, and why in words the owner can act on: other
    # tenants' rollouts carry the accepted version instead until the owner changes
    # the site or deploys it again.
    refused_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    refused_reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    # What verification saw on the last deployment that asked for the site (its
    # backend answering 5xx, say): a warning for the owner, not a reason to roll back.
    deploy_warning: Mapped[str] = mapped_column(Text, default="", server_default="")

    owner: Mapped[User] = relationship()
    pool: Mapped[Pool] = relationship()
    hostnames: Mapped[list[SiteHostname]] = relationship(
        back_populates="site",
        cascade="all, delete-orphan",
        order_by="SiteHostname.position",
        passive_deletes=True,
    )
    backends: Mapped[list[SiteBackend]] = relationship(
        back_populates="site",
        cascade="all, delete-orphan",
        order_by="SiteBackend.position",
        passive_deletes=True,
    )
    basic_auth_users: Mapped[list[SiteBasicAuthUser]] = relationship(
        back_populates="site",
        cascade="all, delete-orphan",
        order_by="SiteBasicAuthUser.username",
        passive_deletes=True,
    )

    # Loaded with every site query (one extra SELECT for all rows): renderers need it.
    certificate: Mapped[Certificate | None] = relationship(
        back_populates="site", uselist=False, lazy="selectin", passive_deletes=True,
        cascade="all, delete-orphan",
    )

    @property
    def aliases(self) -> list[str]:
        return [h.name for h in self.hostnames if h.position > 0]

    @property
    def server_names(self) -> list[str]:
        return [h.name for h in self.hostnames]

    @property
    def rate_limit(self) -> dict[str, Any] | None:
        if self.rate_limit_rps is None:
            return None
        return {"requests_per_second": self.rate_limit_rps, "burst": self.rate_limit_burst}

    def __repr__(self) -> str:
        return f"<Site {self.id} {self.domain}>"


class SiteHostname(db.Model):
    """Every name a site answers to (the domain at position 0, then aliases); the
    unique constraint makes a name belong to one site across the whole fleet."""

    __tablename__ = "site_hostnames"

    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(253), unique=True)
    position: Mapped[int] = mapped_column(Integer, default=0)

    site: Mapped[Site] = relationship(back_populates="hostnames")


class SiteBackend(db.Model):
    __tablename__ = "site_backends"

    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), index=True)
    host: Mapped[str] = mapped_column(String(253))
    port: Mapped[int] = mapped_column(Integer)
    weight: Mapped[int] = mapped_column(Integer, default=1)
    position: Mapped[int] = mapped_column(Integer, default=0)

    site: Mapped[Site] = relationship(back_populates="backends")


class SiteBasicAuthUser(db.Model):
    __tablename__ = "site_basic_auth_users"
    __table_args__ = (UniqueConstraint("site_id", "username"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), index=True)
    username: Mapped[str] = mapped_column(String(64))
    # bcrypt; the plaintext is write-only and never stored.
    password_hash: Mapped[str] = mapped_column(String(128))

    site: Mapped[Site] = relationship(back_populates="basic_auth_users")


class DomainGrant(db.Model):
    """A domain an administrator gave one client: only that client may name sites
    with it, under it or over it, whoever comes first (a name is not claimed by
    being quicker than its owner)."""

    __tablename__ = "domain_grants"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(253), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    granted_by: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    user: Mapped[User] = relationship()


class BlockedName(db.Model):
    """A name an administrator blocked: it stays blocked when its site is deleted and
    created again, whoever creates it, until an administrator lifts the block."""

    __tablename__ = "blocked_names"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(253), unique=True)
    reason: Mapped[str] = mapped_column(String(500), default="")
    blocked_by: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
