"""Figures for the admin dashboard, gathered in as few queries as possible."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from app.extensions import db
from app.models import AuditLog, Node, Pool, Site, User
from app.services import audit
from app.services.common import require_admin


@dataclass(frozen=True)
class AdminOverview:
    users: int
    nodes: int
    pools: int
    sites: int
    recent: list[AuditLog]


def admin_overview(actor: User, recent: int = 10) -> AdminOverview:
    """Fleet-wide counts (one query) and the latest audit entries."""
    require_admin(actor)
    users, nodes, pools, sites = db.session.execute(select(*(
        select(func.count()).select_from(model).scalar_subquery()
        for model in (User, Node, Pool, Site)
    ))).one()
    return AdminOverview(
        users=users, nodes=nodes, pools=pools, sites=sites,
        recent=audit.list_entries(actor, per_page=recent).items,
    )
