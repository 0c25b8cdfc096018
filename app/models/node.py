"""Proxy nodes and the pools that group them."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import db
from app.models.base import TimestampMixin, enum_column
from app.security import EncryptedText


class ProxyType(enum.StrEnum):
    NGINX = "nginx"
    CADDY = "caddy"
    TRAEFIK = "traefik"


class NodeStatus(enum.StrEnum):
    UNKNOWN = "unknown"
    ONLINE = "online"
    OFFLINE = "offline"
    DRAINING = "draining"


class Pool(TimestampMixin, db.Model):
    """A set of nodes that serve the same sites."""

    __tablename__ = "pools"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(String(255), default="")

    nodes: Mapped[list[Node]] = relationship(back_populates="pool")


class Node(TimestampMixin, db.Model):
    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    host: Mapped[str] = mapped_column(String(253))
    ssh_port: Mapped[int] = mapped_column(Integer, default=22)
    ssh_user: Mapped[str] = mapped_column(String(64), default="root")
    ssh_private_key: Mapped[str | None] = mapped_column(EncryptedText, nullable=True)
    ssh_password: Mapped[str | None] = mapped_column(EncryptedText, nullable=True)
    # OpenSSH "type base64" line, pinned on first contact.
    host_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    # A different key the node presented: refused until an admin accepts it.
    pending_host_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    proxy_type: Mapped[ProxyType] = mapped_column(
        enum_column(ProxyType, name="node_proxy_type"), default=ProxyType.NGINX
    )
    pool_id: Mapped[int] = mapped_column(ForeignKey("pools.id", ondelete="RESTRICT"), index=True)
    config_dir: Mapped[str] = mapped_column(String(512))
    # The file "prepare" makes carry the engine's include line (a drop-in for nginx,
    # the Caddyfile itself for Caddy); empty: the engine's default.
    main_config: Mapped[str] = mapped_column(String(512), default="", server_default="")
    test_command: Mapped[str] = mapped_column(String(512))
    reload_command: Mapped[str] = mapped_column(String(512))
    listen_address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    http_port: Mapped[int] = mapped_column(Integer, default=80)
    https_port: Mapped[int] = mapped_column(Integer, default=443)
    glances_url: Mapped[str | None] = mapped_column(String(512), nullable=True)
    # Node-side paths the rendered configs refer to (per-site logs, cache, GeoIP).
    log_dir: Mapped[str] = mapped_column(String(512), server_default="/var/log/rpcc")
    cache_dir: Mapped[str] = mapped_column(String(512), server_default="/var/cache/rpcc")
    geoip_db_path: Mapped[str] = mapped_column(
        String(512), server_default="/usr/share/GeoIP/GeoLite2-Country.mmdb"
    )
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    status: Mapped[NodeStatus] = mapped_column(
        enum_column(NodeStatus, name="node_status"), default=NodeStatus.UNKNOWN
    )
    is_discovered: Mapped[bool] = mapped_column(Boolean, default=False)
    last_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Result of the last "check" action: {"ssh": ..., "service": ..., "http": ...}.
    last_check: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    last_check_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                           nullable=True)
    # Files on the node differ from its last deployed version (what differs, why).
    drifted: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    drift_details: Mapped[str] = mapped_column(Text, default="", server_default="")
    drift_checked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                              nullable=True)
    # What the last metrics poll learnt: the Glances API version it speaks ("3" or "4",
    # None when no Glances answered) and, when it failed, why in words.
    glances_api: Mapped[str | None] = mapped_column(String(8), nullable=True)
    metrics_error: Mapped[str] = mapped_column(String(300), default="", server_default="")
    metrics_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # The loopback port where the proxy's counters are read (nginx's status listener,
    # which its managed files open there, or Caddy's admin endpoint); None: the
    # engine's default.
    status_port: Mapped[int | None] = mapped_column(Integer, nullable=True)

    pool: Mapped[Pool] = relationship(back_populates="nodes")

    def __repr__(self) -> str:
        return f"<Node {self.id} {self.name}>"
