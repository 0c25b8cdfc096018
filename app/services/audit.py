"""The audit trail: every state change a service makes is recorded here."""

from __future__ import annotations

import contextvars
from datetime import datetime
from typing import Any

from sqlalchemy import select

from app import observability
from app.extensions import db
from app.models import AuditLog, User
from app.services.common import Page, paginate, require_admin

# The client address is request metadata, not a business input: the web layer sets
# it once per request so that services need not take it as a parameter.
client_ip: contextvars.ContextVar[str] = contextvars.ContextVar("client_ip", default="")


def record(
    actor: User | None,
    action: str,
    object_type: str,
    object_id: Any = "",
    details: dict[str, Any] | None = None,
) -> AuditLog:
    """Add an audit row to the current transaction (the caller commits)."""
    entry = AuditLog(
        user_id=actor.id if actor is not None else None,
        username=actor.username if actor is not None else "system",
        action=action,
        object_type=object_type,
        object_id=str(object_id),
        details=details or {},
        ip=client_ip.get(),
        request_id=observability.request_id.get(),
    )
    db.session.add(entry)
    return entry


def list_entries(
    actor: User,
    *,
    page: int = 1,
    per_page: int = 50,
    username: str | None = None,
    action: str | None = None,
    object_type: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Page[AuditLog]:
    require_admin(actor)
    stmt = select(AuditLog).order_by(AuditLog.at.desc(), AuditLog.id.desc())
    if username:
        stmt = stmt.where(AuditLog.username == username)
    if action:
        stmt = stmt.where(AuditLog.action == action)
    if object_type:
        stmt = stmt.where(AuditLog.object_type == object_type)
    if since:
        stmt = stmt.where(AuditLog.at >= since)
    if until:
        stmt = stmt.where(AuditLog.at <= until)
    return paginate(stmt, page, per_page)


def object_names(entries: list[AuditLog]) -> dict[tuple[str, str], str]:
    """The current names of the objects ``entries`` are about (one query per kind), so
    the log reads "node eu-1" rather than "node #1"; deleted objects have none."""
    from app.models import DnsProvider, Node, Pool, Site

    columns: dict[str, Any] = {"user": (User, User.username), "node": (Node, Node.name),
                               "pool": (Pool, Pool.name), "site": (Site, Site.domain),
                               "dns_provider": (DnsProvider, DnsProvider.name)}
    wanted: dict[str, set[int]] = {}
    for entry in entries:
        if entry.object_type in columns and entry.object_id.isdigit():
            wanted.setdefault(entry.object_type, set()).add(int(entry.object_id))
    names: dict[tuple[str, str], str] = {}
    for kind, ids in wanted.items():
        model, column = columns[kind]
        for object_id, name in db.session.execute(
                select(model.id, column).where(model.id.in_(ids))):
            names[(kind, str(object_id))] = name
    return names


def known_actions() -> list[str]:
    return list(db.session.scalars(select(AuditLog.action).distinct().order_by(AuditLog.action)))
