"""What was deployed where: config versions per node, rollouts and their per-node
deployments, and the node locks that serialise them."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import db
from app.models.base import enum_column, utcnow
from app.models.node import Node
from app.models.site import Site
from app.models.user import User
from app.security import EncryptedText


class DeploymentStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    # Not attempted: the canary failed first.
    SKIPPED = "skipped"

    @property
    def finished(self) -> bool:
        return self not in (DeploymentStatus.PENDING, DeploymentStatus.RUNNING)


class RolloutKind(enum.StrEnum):
    DEPLOY = "deploy"
    ROLLBACK = "rollback"


class ConfigVersion(db.Model):
    """The full file set one node was given: rollback re-deploys it as it was.

    A version keeps only a manifest of its files' content hashes; each distinct
    content is a :class:`ConfigBlob`, stored once however many versions and nodes
    carry it.  Most versions keep only what changed since an earlier version of the
    same node (``base_id``): a one-site change in a big pool then costs the database
    a few manifest entries per node, not the pool's list of files.  Every few
    versions, or when most files changed, a version keeps its whole manifest.
    """

    __tablename__ = "config_versions"
    __table_args__ = (UniqueConstraint("node_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    # {relative path: sha256 hex of the file's UTF-8 text}, each a ConfigBlob; with a
    # base, only the paths that differ from it (None for a file the base has and
    # this version does not).
    manifest: Mapped[dict[str, str | None]] = mapped_column(JSON)
    base_id: Mapped[int | None] = mapped_column(
        ForeignKey("config_versions.id", ondelete="CASCADE"), nullable=True)
    # How many bases up the chain the whole manifest is (0: this one).
    depth: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    sha256: Mapped[str] = mapped_column(String(64))
    # {site id: site config version} of the sites the file set carries.
    site_versions: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    file_count: Mapped[int] = mapped_column(Integer, default=0)
    created_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    node: Mapped[Node] = relationship()
    created_by: Mapped[User | None] = relationship()


class ConfigBlob(db.Model):
    """One file content of config versions, named by its SHA-256.

    Stored encrypted because files include the sites' private keys.  Rows are only
    ever added: a manifest naming a hash can count on its content being here.
    """

    __tablename__ = "config_blobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    content: Mapped[str] = mapped_column(EncryptedText)


class Rollout(db.Model):
    """One request to deploy (a site's pool, or a rollback of one node): what the API
    calls a deployment, with one :class:`NodeDeployment` per node."""

    __tablename__ = "rollouts"
    # The few rollouts not finished yet, among all the history, for the job that
    # resumes those whose run was lost.
    __table_args__ = (Index("ix_rollouts_unfinished", "status",
                            sqlite_where=text("status IN ('pending', 'running')"),
                            postgresql_where=text("status IN ('pending', 'running')")),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[RolloutKind] = mapped_column(
        enum_column(RolloutKind, name="rollout_kind"), default=RolloutKind.DEPLOY)
    site_id: Mapped[int | None] = mapped_column(
        ForeignKey("sites.id", ondelete="SET NULL"), nullable=True, index=True)
    # The owner at the time, so that a client keeps seeing their rollouts.
    owner_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True, index=True)
    pool_id: Mapped[int | None] = mapped_column(
        ForeignKey("pools.id", ondelete="SET NULL"), nullable=True)
    status: Mapped[DeploymentStatus] = mapped_column(
        enum_column(DeploymentStatus, name="rollout_status"), default=DeploymentStatus.PENDING)
    canary_node_id: Mapped[int | None] = mapped_column(
        ForeignKey("nodes.id", ondelete="SET NULL"), nullable=True)
    # For a rollback: the version being restored.
    target_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("config_versions.id", ondelete="SET NULL"), nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
    triggered_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    # The X-Request-ID of the request that started it: its log lines carry the same.
    request_id: Mapped[str] = mapped_column(String(128), default="", server_default="")
    # The lease of the run that carries it out (its holder, until when unless renewed):
    # a second run (a task handed out again) waits while it lives, and carries on
    # from the unfinished nodes once it has expired with a run that died.
    runner: Mapped[str] = mapped_column(String(128), default="", server_default="")
    runner_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                               nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                 index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    site: Mapped[Site | None] = relationship()
    triggered_by: Mapped[User | None] = relationship(foreign_keys=[triggered_by_id])
    deployments: Mapped[list[NodeDeployment]] = relationship(
        back_populates="rollout", order_by="NodeDeployment.id")


class NodeDeployment(db.Model):
    """One node's part of a rollout, with the time each step took."""

    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(primary_key=True)
    rollout_id: Mapped[int] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), index=True)
    site_id: Mapped[int | None] = mapped_column(
        ForeignKey("sites.id", ondelete="SET NULL"), nullable=True, index=True)
    node_id: Mapped[int | None] = mapped_column(
        ForeignKey("nodes.id", ondelete="SET NULL"), nullable=True, index=True)
    node_name: Mapped[str] = mapped_column(String(64), default="")
    config_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("config_versions.id", ondelete="SET NULL"), nullable=True)
    status: Mapped[DeploymentStatus] = mapped_column(
        enum_column(DeploymentStatus, name="deployment_status"),
        default=DeploymentStatus.PENDING)
    step: Mapped[str] = mapped_column(String(32), default="")
    # [{"step": name, "seconds": float, "ok": bool}]
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    error: Mapped[str] = mapped_column(Text, default="")
    triggered_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    rollout: Mapped[Rollout] = relationship(back_populates="deployments")
    config_version: Mapped[ConfigVersion | None] = relationship()


class NodeLease(db.Model):
    """A lease on a node: at most one deployment touches a node at a time, across
    threads, worker processes and app instances sharing the database.  The holder
    renews ``expires_at`` while it works; a crashed holder's lease simply expires."""

    __tablename__ = "node_locks"

    node_id: Mapped[int] = mapped_column(
        ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    acquired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
