"""Figures for the dashboards, gathered in a fixed number of queries whatever the
size of the fleet."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import selectinload

from app.extensions import db
from app.models import (
    AuditLog,
    Certificate,
    CertificateStatus,
    DeploymentStatus,
    Node,
    NodeStatus,
    Pool,
    Rollout,
    Site,
    SiteStatus,
    SslMode,
    User,
)
from app.models.base import utcnow
from app.services import audit, jobs
from app.services.common import require_admin

# A certificate this close to its end is shown as expiring on the dashboard.
EXPIRY_WARNING = timedelta(days=14)
# A scheduler whose heartbeat is older than this many heartbeats is shown as stalled.
STALE_HEARTBEATS = 3

NODE_STATES = ("online", "offline", "draining", "disabled", "drifted")
SITE_STATES = ("deployed", "partial", "failed", "pending", "blocked")
CERTIFICATE_STATES = ("failing", "expiring")


@dataclass(frozen=True)
class AdminOverview:
    users: int
    pools: int
    nodes: dict[str, int]
    node_total: int
    sites: dict[str, int]
    site_total: int
    certificates: dict[str, int]
    failed_rollouts: list[Rollout]
    scheduler: jobs.SchedulerState
    scheduler_healthy: bool
    recent: list[AuditLog] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """Everything fine: nothing offline, drifted, failed or expiring."""
        return (not self.nodes["offline"] and not self.nodes["drifted"]
                and not self.sites["failed"] and not self.sites["partial"]
                and not any(self.certificates.values()) and self.scheduler_healthy)


def node_state_filter(state: str) -> ColumnElement[bool]:
    """The condition selecting nodes in one of ``NODE_STATES`` (shared by the counts and
    the node list's filter, so a figure and the list it links to always agree)."""
    conditions = {
        "online": (Node.enabled.is_(True)) & (Node.status == NodeStatus.ONLINE),
        "offline": (Node.enabled.is_(True)) & (Node.status.in_(
            [NodeStatus.OFFLINE, NodeStatus.UNKNOWN])),
        "draining": (Node.enabled.is_(True)) & (Node.status == NodeStatus.DRAINING),
        "disabled": Node.enabled.is_(False),
        "drifted": Node.drifted.is_(True),
    }
    return conditions[state]


def site_state_filter(state: str) -> ColumnElement[bool]:
    """The condition selecting sites in one of ``SITE_STATES`` (see node_state_filter)."""
    if state == "blocked":
        return Site.blocked.is_(True)
    return Site.status == SiteStatus(state)


def certificate_state_filter(state: str) -> ColumnElement[bool]:
    """Sites whose certificate is failing, or valid but ending within EXPIRY_WARNING."""
    served = Site.ssl_mode != SslMode.NONE
    if state == "failing":
        return served & Site.id.in_(select(Certificate.site_id).where(
            Certificate.status == CertificateStatus.FAILED))
    return served & Site.id.in_(select(Certificate.site_id).where(
        Certificate.not_after.is_not(None), Certificate.not_after < utcnow() + EXPIRY_WARNING))


def admin_overview(actor: User, recent: int = 10, heartbeat: float = 10.0) -> AdminOverview:
    """Is everything fine? Nodes, sites and certificates by state (one query each),
    the latest failed deployments, the scheduler's heartbeat, the latest audit entries.

    :param heartbeat: the scheduler's heartbeat interval, to tell a stalled one.
    """
    require_admin(actor)

    def counts(states: tuple[str, ...], condition: Callable[[str], ColumnElement[bool]],
               model: type[Any]) -> dict[str, int]:
        row = db.session.execute(select(*(
            func.coalesce(func.sum(case((condition(state), 1), else_=0)), 0)
            for state in states)).select_from(model)).one()
        return dict(zip(states, (int(value) for value in row), strict=True))

    users, pools, node_total, site_total = db.session.execute(select(*(
        select(func.count()).select_from(model).scalar_subquery()
        for model in (User, Pool, Node, Site)
    ))).one()
    state = jobs.scheduler_state()
    age = state.heartbeat_age_seconds
    failed = list(db.session.scalars(
        select(Rollout).options(selectinload(Rollout.site))
        .where(Rollout.status == DeploymentStatus.FAILED)
        .order_by(Rollout.id.desc()).limit(5)))
    return AdminOverview(
        users=users, pools=pools, node_total=node_total, site_total=site_total,
        nodes=counts(NODE_STATES, node_state_filter, Node),
        sites=counts(SITE_STATES, site_state_filter, Site),
        certificates=counts(CERTIFICATE_STATES, certificate_state_filter, Site),
        failed_rollouts=failed, scheduler=state,
        scheduler_healthy=state.leader is not None and age is not None
        and age <= heartbeat * STALE_HEARTBEATS,
        recent=audit.list_entries(actor, per_page=recent).items,
    )
