"""Alert rules: what administrators want to hear about, and the recommended set.

The recommended rules are added when an administrator asks (a button on the rules
page, ``POST /api/v1/alert-rules/recommended``), not by themselves on a first visit:
rules decide who gets woken up, so they exist because someone chose them, and a page
view never writes.  Asking again adds only what is missing."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from app.errors import ValidationError
from app.extensions import db
from app.models import (
    Alert,
    AlertKind,
    AlertRule,
    AlertSeverity,
    AlertState,
    Pool,
    User,
)
from app.models.base import utcnow
from app.security import validate_int
from app.services import audit
from app.services.alerts.kinds import KINDS
from app.services.alerts.transitions import move
from app.services.common import Page, get_or_404, paginate, require_admin

FIELDS = ("name", "kind", "threshold", "duration_seconds", "severity", "pool",
          "renotify_seconds", "enabled")
MAX_DURATION = 7 * 86400
MIN_RENOTIFY = 60
NAME_LENGTH = 100

_HOUR = 3600
#: (name, kind, threshold, held for seconds, severity, re-notify seconds).  No load
#: rule: a good threshold depends on each node's cores.
RECOMMENDED: tuple[tuple[str, AlertKind, float | None, int, AlertSeverity, int], ...] = (
    ("Node unreachable", AlertKind.NODE_UNREACHABLE, None, 0, AlertSeverity.CRITICAL, 4 * _HOUR),
    ("Proxy not answering", AlertKind.PROXY_DOWN, None, 0, AlertSeverity.CRITICAL, 4 * _HOUR),
    ("Site down", AlertKind.SITE_DOWN, 1, 180, AlertSeverity.CRITICAL, 4 * _HOUR),
    ("CPU above 90%", AlertKind.CPU, 90, 600, AlertSeverity.WARNING, 0),
    ("Memory above 90%", AlertKind.MEMORY, 90, 600, AlertSeverity.WARNING, 0),
    ("Disk above 90%", AlertKind.DISK, 90, 300, AlertSeverity.WARNING, 0),
    ("Certificate expires within 14 days", AlertKind.CERT_EXPIRING, 14, 0,
     AlertSeverity.WARNING, 0),
    ("Certificate expires within 7 days", AlertKind.CERT_EXPIRING, 7, 0,
     AlertSeverity.WARNING, 0),
    ("Certificate expires within 1 day", AlertKind.CERT_EXPIRING, 1, 0,
     AlertSeverity.CRITICAL, 4 * _HOUR),
    ("Certificate not the issued one", AlertKind.CERT_MISMATCH, None, 600,
     AlertSeverity.WARNING, 0),
    ("Deployment failed", AlertKind.DEPLOYMENT_FAILED, None, 0, AlertSeverity.WARNING, 0),
    ("Configuration drift", AlertKind.DRIFT, None, 0, AlertSeverity.WARNING, 0),
    ("Nameservers not as expected", AlertKind.NS_MISMATCH, None, _HOUR,
     AlertSeverity.WARNING, 0),
)


# ----------------------------------------------------------------------------- reading

def list_rules(actor: User, *, page: int = 1, per_page: int = 50) -> Page[AlertRule]:
    require_admin(actor)
    return paginate(select(AlertRule).order_by(AlertRule.kind, AlertRule.threshold,
                                               AlertRule.id), page, per_page)


def get_rule(actor: User, rule_id: int) -> AlertRule:
    require_admin(actor)
    rule: AlertRule = get_or_404(AlertRule, rule_id, "alert rule")
    return rule


def pool_names(pool_ids: set[int | None]) -> dict[int, str]:
    """Names of the pools rules are scoped to (one query)."""
    wanted = {pool_id for pool_id in pool_ids if pool_id is not None}
    if not wanted:
        return {}
    return dict(db.session.execute(select(Pool.id, Pool.name)
                                   .where(Pool.id.in_(wanted))).all())


# ----------------------------------------------------------------------------- changing

def create_rule(actor: User, data: dict[str, Any]) -> AlertRule:
    """A new rule.  :raises ValidationError: per field."""
    require_admin(actor)
    clean = _clean(data, None)
    rule = AlertRule(**clean)
    db.session.add(rule)
    db.session.flush()
    audit.record(actor, "alert_rule.create", "alert_rule", rule.id, _audited(clean))
    db.session.commit()
    return rule


def update_rule(actor: User, rule_id: int, data: dict[str, Any]) -> AlertRule:
    """Change a rule; keys left out keep their value.  A rule turned off closes its
    open alerts at once and without a notice: whoever turned it off knows."""
    rule = get_rule(actor, rule_id)
    clean = _clean(data, rule)
    was_enabled = rule.enabled
    for key, value in clean.items():
        setattr(rule, key, value)
    if was_enabled and not rule.enabled:
        close_open_alerts(rule.id)
    audit.record(actor, "alert_rule.update", "alert_rule", rule.id, _audited(clean))
    db.session.commit()
    return rule


def delete_rule(actor: User, rule_id: int) -> None:
    """Delete a rule with its alerts and their history."""
    rule = get_rule(actor, rule_id)
    audit.record(actor, "alert_rule.delete", "alert_rule", rule.id,
                 {"name": rule.name, "kind": rule.kind.value})
    db.session.delete(rule)
    db.session.commit()


def add_recommended_rules(actor: User) -> list[AlertRule]:
    """Add each recommended rule that has no rule of the same kind and threshold for
    every pool yet.  :returns: the rules added (none when all exist)."""
    require_admin(actor)
    existing = set(db.session.execute(select(AlertRule.kind, AlertRule.threshold)
                                      .where(AlertRule.pool_id.is_(None))))
    added = []
    for name, kind, threshold, duration, severity, renotify in RECOMMENDED:
        if (kind, threshold) in existing:
            continue
        rule = AlertRule(name=name, kind=kind, threshold=threshold, duration_seconds=duration,
                         severity=severity, renotify_seconds=renotify, enabled=True)
        db.session.add(rule)
        added.append(rule)
    db.session.flush()
    if added:
        audit.record(actor, "alert_rule.recommended", "alert_rule", "",
                     {"added": [rule.name for rule in added]})
    db.session.commit()
    return added


def close_open_alerts(rule_id: int) -> int:
    """Resolve a rule's open alerts without a notice (in the caller's transaction)."""
    now = utcnow()
    open_alerts = db.session.scalars(select(Alert).where(
        Alert.rule_id == rule_id, Alert.state != AlertState.RESOLVED)).all()
    return sum(move(alert, AlertState.RESOLVED, now, resolved_at=now) is not None
               for alert in open_alerts)


# ----------------------------------------------------------------------------- checks

def _clean(data: dict[str, Any], rule: AlertRule | None) -> dict[str, Any]:
    """The rule's values checked; ``rule`` is the rule being changed (None: a new one,
    whose name and kind are required)."""
    errors: dict[str, str] = {}
    out: dict[str, Any] = {}
    creating = rule is None
    for key in sorted(set(data) - set(FIELDS)):
        errors[key] = "unknown field"

    if "name" in data or creating:
        name = data.get("name")
        if not isinstance(name, str) or not name.strip() or len(name.strip()) > NAME_LENGTH \
                or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
            errors["name"] = f"is required: 1 to {NAME_LENGTH} characters on one line"
        else:
            out["name"] = name.strip()

    kind: AlertKind | None = rule.kind if rule is not None else None
    if "kind" in data or creating:
        try:
            wanted = AlertKind(str(data.get("kind")))
        except ValueError:
            errors["kind"] = "must be one of " + ", ".join(k.value for k in AlertKind)
        else:
            if rule is not None and wanted != rule.kind:
                errors["kind"] = "cannot change: add a rule of the other kind"
            kind = wanted
            out["kind"] = wanted

    if kind is not None and ("threshold" in data or creating):
        try:
            out["threshold"] = _threshold(kind, data.get("threshold"))
        except ValueError as exc:
            errors["threshold"] = str(exc)

    for key, check in (("duration_seconds", _duration), ("renotify_seconds", _renotify)):
        if key in data or creating:
            try:
                out[key] = check(data.get(key))
            except ValueError as exc:
                errors[key] = str(exc)

    if "severity" in data or creating:
        try:
            out["severity"] = AlertSeverity(data.get("severity") or AlertSeverity.WARNING.value)
        except ValueError:
            errors["severity"] = "must be one of " + ", ".join(s.value for s in AlertSeverity)

    if "pool" in data:
        pool = data["pool"]
        if pool in (None, ""):
            out["pool_id"] = None
        else:
            found = db.session.scalar(select(Pool.id).where(Pool.name == pool)) \
                if isinstance(pool, str) else None
            if found is None:
                errors["pool"] = "no such pool"
            out["pool_id"] = found

    if "enabled" in data or creating:
        enabled = data.get("enabled", True)
        if not isinstance(enabled, bool):
            errors["enabled"] = "must be true or false"
        out["enabled"] = enabled
    if errors:
        raise ValidationError("invalid alert rule", errors)
    return out


def _threshold(kind: AlertKind, value: Any) -> float | None:
    spec = KINDS[kind].threshold
    blank = value is None or value == ""
    if spec is None:
        if not blank:
            raise ValueError(f"a {KINDS[kind].label.lower()} rule takes no threshold: "
                             "leave it empty")
        return None
    if blank:
        raise ValueError(f"is required: {spec.describe()}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"must be a number, {spec.describe()}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not spec.low <= value <= spec.high:
        raise ValueError(f"must be {spec.describe()}")
    if spec.whole and value != int(value):
        raise ValueError(f"must be a whole number, {spec.describe()}")
    return float(value)


def _duration(value: Any) -> int:
    return validate_int(0 if value in (None, "") else value, 0, MAX_DURATION)


def _renotify(value: Any) -> int:
    seconds = validate_int(0 if value in (None, "") else value, 0, MAX_DURATION)
    if 0 < seconds < MIN_RENOTIFY:
        raise ValueError(f"must be 0 (never) or {MIN_RENOTIFY} to {MAX_DURATION} seconds")
    return seconds


def _audited(clean: dict[str, Any]) -> dict[str, Any]:
    return {key: getattr(value, "value", value) for key, value in clean.items()}
