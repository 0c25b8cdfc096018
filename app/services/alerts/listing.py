"""Alerts as people read them: lists, one alert with its history, acknowledging.

Administrators see every alert.  A client sees the alerts about their own sites, and
nothing else: another client's alert, and any alert about a node or a pool, is "not
found" (the tenancy rule: ids reveal nothing)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import selectinload

from app.errors import Conflict, NotFound, ValidationError
from app.extensions import db
from app.models import (
    Alert,
    AlertKind,
    AlertRule,
    AlertSeverity,
    AlertState,
    AlertTransition,
    Node,
    Pool,
    Site,
    SubjectKind,
    User,
)
from app.models.base import utcnow
from app.services import audit
from app.services.common import Page, paginate

#: What a list of alerts can show: ``open`` (pending or firing, the default),
#: ``acknowledged`` (open and acknowledged), one state, or ``all``.
STATES = ("open", "firing", "pending", "acknowledged", "resolved", "all")


def scoped(stmt: Select[Any], actor: User) -> Select[Any]:
    """The tenancy rule for alerts, applied to any query of them."""
    if actor.is_admin:
        return stmt
    owned = select(Site.id).where(Site.owner_id == actor.id)
    return stmt.where(Alert.subject_kind == SubjectKind.SITE, Alert.site_id.in_(owned))


def list_alerts(actor: User, *, page: int = 1, per_page: int = 50, state: str = "open",
                kind: str | None = None, severity: str | None = None,
                site_id: int | None = None) -> Page[Alert]:
    """Alerts the actor may see, newest first.  :raises ValidationError: an unknown
    filter value."""
    stmt = scoped(select(Alert).options(selectinload(Alert.rule)), actor)
    if state not in STATES:
        raise ValidationError("unknown state", {"state": "must be one of " + ", ".join(STATES)})
    open_states = (AlertState.PENDING, AlertState.FIRING)
    if state == "open":
        stmt = stmt.where(Alert.state.in_(open_states))
    elif state == "acknowledged":
        stmt = stmt.where(Alert.state.in_(open_states), Alert.acknowledged_at.is_not(None))
    elif state != "all":
        stmt = stmt.where(Alert.state == AlertState(state))
    filters: dict[str, Any] = {}
    for name, value, enum_cls in (("kind", kind, AlertKind), ("severity", severity,
                                                               AlertSeverity)):
        if value:
            try:
                filters[name] = enum_cls(value)
            except ValueError:
                raise ValidationError(f"unknown {name}", {name: "must be one of " + ", ".join(
                    member.value for member in enum_cls)}) from None
    if "kind" in filters or "severity" in filters:
        stmt = stmt.join(AlertRule, AlertRule.id == Alert.rule_id)
        if "kind" in filters:
            stmt = stmt.where(AlertRule.kind == filters["kind"])
        if "severity" in filters:
            stmt = stmt.where(AlertRule.severity == filters["severity"])
    if site_id is not None:
        stmt = stmt.where(Alert.site_id == site_id)
    return paginate(stmt.order_by(Alert.started_at.desc(), Alert.id.desc()), page, per_page)


def get_alert(actor: User, alert_id: int) -> Alert:
    """One alert the actor may see, with its rule and transitions.

    :raises NotFound: no such alert, or not the actor's."""
    alert = db.session.scalar(scoped(select(Alert).where(Alert.id == alert_id), actor)
                              .options(selectinload(Alert.rule),
                                       selectinload(Alert.transitions)))
    if alert is None:
        raise NotFound("alert not found")
    return alert


def acknowledge(actor: User, alert_id: int) -> Alert:
    """Say that someone is on it: a firing alert stops reminding until it resolves
    (its resolution is still notified).  Acknowledging twice keeps the first.

    :raises Conflict: the alert is resolved already."""
    alert = get_alert(actor, alert_id)
    if alert.state == AlertState.RESOLVED:
        raise Conflict("this alert is resolved already: there is nothing to acknowledge")
    if alert.acknowledged_at is None:
        alert.acknowledged_at = utcnow()
        alert.acknowledged_by_id = actor.id
        audit.record(actor, "alert.acknowledge", "alert", alert.id,
                     {"rule": alert.rule.name, "state": alert.state.value})
        db.session.commit()
    return alert


def list_transitions(actor: User, *, page: int = 1,
                     per_page: int = 50) -> Page[AlertTransition]:
    """Every move of the alerts the actor may see, newest first: the alerts' history,
    with what was notified and what a silence held back."""
    stmt = (select(AlertTransition).join(Alert, Alert.id == AlertTransition.alert_id)
            .options(selectinload(AlertTransition.alert).selectinload(Alert.rule))
            .order_by(AlertTransition.id.desc()))
    return paginate(scoped(stmt, actor), page, per_page)


def subject_names(alerts: Iterable[Alert]) -> dict[tuple[SubjectKind, int], str]:
    """The name of each alert's subject (a node's name, a site's domain, a pool's
    name), a query per kind."""
    wanted: dict[SubjectKind, set[int]] = {}
    for alert in alerts:
        wanted.setdefault(alert.subject_kind, set()).add(alert.subject_id)
    columns = {SubjectKind.NODE: (Node.id, Node.name), SubjectKind.SITE: (Site.id, Site.domain),
               SubjectKind.POOL: (Pool.id, Pool.name)}
    names: dict[tuple[SubjectKind, int], str] = {}
    for kind, ids in wanted.items():
        if kind not in columns:
            continue
        key, name = columns[kind]
        for subject_id, shown in db.session.execute(select(key, name).where(key.in_(ids))):
            names[(kind, subject_id)] = shown
    return names


def acknowledgers(alerts: Iterable[Alert]) -> dict[int, str]:
    """Who acknowledged each alert, by username (for administrators' pages)."""
    ids = {a.acknowledged_by_id for a in alerts if a.acknowledged_by_id is not None}
    if not ids:
        return {}
    return dict(db.session.execute(select(User.id, User.username)
                                   .where(User.id.in_(ids))).all())
