"""Maintenance silences: a window during which alerts about a node, a pool (with its
nodes and sites) or a site send no notice.

A silence holds notices back; it does not stop alerts.  Their transitions are
recorded as usual, marked ``silenced``, and when the window ends (or is ended early)
the next evaluation sends what still describes the present: the firing notice of an
alert that is still firing, and the recovery notice of an alert whose firing was
announced before the window.  An alert that fired and recovered inside the window
sends nothing: that is what maintenance looks like."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, select

from app.errors import Conflict, ValidationError
from app.extensions import db
from app.models import Alert, Node, Pool, Silence, Site, User
from app.models.base import as_utc, utcnow
from app.services import audit
from app.services.common import Page, get_or_404, paginate, require_admin

FIELDS = ("node", "pool", "site", "starts_at", "ends_at", "reason")
TARGETS = ("node", "pool", "site")
MAX_WINDOW = timedelta(days=31)
REASON_LENGTH = 200
#: The states a silence list can show.
STATES = ("active", "upcoming", "ended")


@dataclass(frozen=True)
class SilenceView:
    """A silence as lists show it: what it covers, by name."""

    silence: Silence
    target_kind: str
    target_name: str
    state: str


# ----------------------------------------------------------------------------- reading

def list_silences(actor: User, *, page: int = 1, per_page: int = 50,
                  state: str | None = None) -> Page[SilenceView]:
    """Silences, the latest to end first; ``state`` keeps only the active, upcoming or
    ended ones."""
    require_admin(actor)
    now = utcnow()
    stmt: Select[Any] = select(Silence).order_by(Silence.ends_at.desc(), Silence.id.desc())
    if state == "active":
        stmt = stmt.where(Silence.starts_at <= now, Silence.ends_at > now)
    elif state == "upcoming":
        stmt = stmt.where(Silence.starts_at > now)
    elif state == "ended":
        stmt = stmt.where(Silence.ends_at <= now)
    elif state is not None:
        raise ValidationError("unknown state", {"state": "must be one of " + ", ".join(STATES)})
    found = paginate(stmt, page, per_page)
    return Page(views(found.items, now), found.page, found.per_page, found.total)


def get_silence(actor: User, silence_id: int) -> Silence:
    require_admin(actor)
    silence: Silence = get_or_404(Silence, silence_id, "silence")
    return silence


def get_silence_view(actor: User, silence_id: int) -> SilenceView:
    return views([get_silence(actor, silence_id)], utcnow())[0]


def views(silences: list[Silence], now: datetime) -> list[SilenceView]:
    """The silences with their targets' names (a query per kind of target)."""
    names: dict[str, dict[int, str]] = {}
    for kind, column, model in (("node", Node.name, Node), ("pool", Pool.name, Pool),
                                ("site", Site.domain, Site)):
        ids = {getattr(s, f"{kind}_id") for s in silences} - {None}
        names[kind] = dict(db.session.execute(select(model.id, column)
                                              .where(model.id.in_(ids))).all()) \
            if ids else {}
    shown = []
    for silence in silences:
        kind = next(k for k in TARGETS if getattr(silence, f"{k}_id") is not None)
        shown.append(SilenceView(silence, kind, names[kind].get(getattr(silence, f"{kind}_id"),
                                                                "?"), state_of(silence, now)))
    return shown


def state_of(silence: Silence, now: datetime) -> str:
    if as_utc(silence.starts_at) > now:
        return "upcoming"
    return "active" if as_utc(silence.ends_at) > now else "ended"


def active_silences(now: datetime) -> list[Silence]:
    """The silences whose window holds ``now`` (few: one query)."""
    return list(db.session.scalars(select(Silence).where(Silence.starts_at <= now,
                                                         Silence.ends_at > now)))


def covers(silences: list[Silence], alert: Alert) -> bool:
    """Whether any of ``silences`` covers ``alert``: its node, its site, or the pool
    they (or it) belong to."""
    return any((s.node_id is not None and s.node_id == alert.node_id)
               or (s.site_id is not None and s.site_id == alert.site_id)
               or (s.pool_id is not None and s.pool_id == alert.pool_id) for s in silences)


# ----------------------------------------------------------------------------- changing

def create_silence(actor: User, data: dict[str, Any]) -> Silence:
    """A new silence of one node, pool or site (by name); ``starts_at`` defaults to
    now.  :raises ValidationError: per field."""
    require_admin(actor)
    clean = _clean(data, None)
    silence = Silence(created_by_id=actor.id, **clean)
    db.session.add(silence)
    db.session.flush()
    audit.record(actor, "silence.create", "silence", silence.id, _audited(clean))
    db.session.commit()
    return silence


def update_silence(actor: User, silence_id: int, data: dict[str, Any]) -> Silence:
    """Change a silence's window or reason (its target stays); keys left out keep
    their value."""
    silence = get_silence(actor, silence_id)
    clean = _clean(data, silence)
    for key, value in clean.items():
        setattr(silence, key, value)
    audit.record(actor, "silence.update", "silence", silence.id, _audited(clean))
    db.session.commit()
    return silence


def end_silence(actor: User, silence_id: int) -> Silence:
    """End a silence now (an upcoming one never starts); the notices it held go out
    at the next evaluation.  :raises Conflict: it has ended already."""
    silence = get_silence(actor, silence_id)
    now = utcnow()
    if as_utc(silence.ends_at) <= now:
        raise Conflict("this silence has ended already")
    silence.ends_at = now
    if as_utc(silence.starts_at) > now:
        silence.starts_at = now
    audit.record(actor, "silence.end", "silence", silence.id)
    db.session.commit()
    return silence


def delete_silence(actor: User, silence_id: int) -> None:
    silence = get_silence(actor, silence_id)
    audit.record(actor, "silence.delete", "silence", silence.id)
    db.session.delete(silence)
    db.session.commit()


def _clean(data: dict[str, Any], silence: Silence | None) -> dict[str, Any]:
    errors: dict[str, str] = {}
    out: dict[str, Any] = {}
    for key in sorted(set(data) - set(FIELDS)):
        errors[key] = "unknown field"
    given = [key for key in TARGETS if data.get(key) not in (None, "")]
    if silence is None:
        if not given:
            errors.update({key: "give the node, the pool or the site to silence"
                           for key in TARGETS})
        for key in given[1:]:
            errors[key] = f"give only one of node, pool and site (not {given[0]} too)"
        if len(given) == 1:
            key = given[0]
            try:
                out[f"{key}_id"] = _target_id(key, data[key])
            except ValueError as exc:
                errors[key] = str(exc)
    else:
        for key in given:
            errors[key] = "cannot change: end this silence and add another"

    now = utcnow()
    starts = silence.starts_at if silence is not None else now
    ends = silence.ends_at if silence is not None else None
    for key in ("starts_at", "ends_at"):
        if key not in data or (key == "starts_at" and data[key] is None and silence is None):
            continue
        value = data[key]
        if not isinstance(value, datetime):
            errors[key] = "must be a date and time (ISO 8601)"
            continue
        value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        out[key] = value
        if key == "starts_at":
            starts = value
        else:
            ends = value
    if ends is None:
        errors.setdefault("ends_at", "is required: when the maintenance ends")
    elif "ends_at" not in errors and "starts_at" not in errors:
        starts, ends = as_utc(starts), as_utc(ends)
        if ends <= starts:
            errors["ends_at"] = "must be after the start"
        elif ends <= now and ("ends_at" in data or "starts_at" in data):
            errors["ends_at"] = "must be in the future"
        elif ends - starts > MAX_WINDOW:
            errors["ends_at"] = f"a silence lasts at most {MAX_WINDOW.days} days"
    if silence is None:
        out.setdefault("starts_at", now)

    if "reason" in data or silence is None:
        reason = data.get("reason") or ""
        if not isinstance(reason, str) or len(reason) > REASON_LENGTH \
                or any(ord(ch) < 32 or ord(ch) == 127 for ch in reason):
            errors["reason"] = f"at most {REASON_LENGTH} characters on one line"
        else:
            out["reason"] = reason.strip()
    if errors:
        raise ValidationError("invalid silence", errors)
    return out


def _target_id(kind: str, name: Any) -> int:
    key, column = {"node": (Node.id, Node.name), "pool": (Pool.id, Pool.name),
                   "site": (Site.id, Site.domain)}[kind]
    found = db.session.scalar(select(key).where(column == name.strip().lower())) \
        if isinstance(name, str) else None
    if found is None:
        raise ValueError(f"no {kind} of that name")
    return int(found)


def _audited(clean: dict[str, Any]) -> dict[str, Any]:
    return {key: value.isoformat() if isinstance(value, datetime) else value
            for key, value in clean.items()}
