"""``/api/v1/alerts`` (each user the alerts they may see: a client those about their
own sites), ``/api/v1/alert-rules`` and ``/api/v1/silences`` (administrators)."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields
from marshmallow.validate import OneOf

from app.api.auth import ApiBlueprint, admin_only, current_actor
from app.api.schemas import (
    ErrorSchema,
    PageQuerySchema,
    QueryDateTime,
    StrictBoolean,
    UtcDateTime,
    WithValues,
    page_schema,
)
from app.models import Alert, AlertKind, AlertRule, AlertSeverity, Silence, User
from app.services import alerts
from app.services.common import Page
from app.web.alert_filters import AlertFilters, SilenceFilters

blp = ApiBlueprint(
    "alerts", __name__, url_prefix="/api/v1/alerts",
    description="Alerts raised by the alert rules: administrators see every alert, a "
                "client those about their own sites. Each move (pending, firing, resolved, "
                "and reminders while firing) is a transition; acknowledging stops reminders.",
)
rules_blp = ApiBlueprint(
    "alert_rules", __name__, url_prefix="/api/v1/alert-rules",
    description="What raises alerts (administrators only).",
)
silences_blp = ApiBlueprint(
    "silences", __name__, url_prefix="/api/v1/silences",
    description="Maintenance windows during which alerts about a node, a pool (with its "
                "nodes and sites) or a site send no notice (administrators only). Notices "
                "held back go out when the window ends if they still hold: the firing of "
                "an alert still firing, the recovery of an alert whose firing was told.",
)

_KINDS = "; ".join(f"{kind.value}: {spec.help}"
                   + (f" (threshold: {spec.threshold.describe()})" if spec.threshold else
                      " (no threshold)") for kind, spec in alerts.KINDS.items())


# ----------------------------------------------------------------------------- rules

class RuleUpdateSchema(Schema):
    """PATCH: keys left out keep their value."""

    name = fields.String(metadata={"description": "at most 100 characters"})
    kind = fields.String(validate=OneOf([k.value for k in AlertKind]),
                         metadata={"description": _KINDS})
    threshold = fields.Float(allow_none=True, allow_nan=False, metadata={
        "description": "what the kind measures (percent, load, nodes, days); null for "
                       "kinds without one"})
    duration_seconds = fields.Integer(strict=True, metadata={
        "description": "how long the condition must hold before the alert fires (0: at "
                       "once; at most 604800)"})
    severity = fields.String(validate=OneOf([s.value for s in AlertSeverity]),
                             metadata={"description": "default warning"})
    pool = fields.String(allow_none=True, metadata={
        "description": "the pool the rule watches (by name); null: every pool"})
    renotify_seconds = fields.Integer(strict=True, metadata={
        "description": "remind every so many seconds while firing and not acknowledged "
                       "(0: never, else 60 to 604800)"})
    enabled = StrictBoolean()


class RuleCreateSchema(RuleUpdateSchema):
    name = fields.String(required=True, metadata={"description": "at most 100 characters"})
    kind = fields.String(required=True, validate=OneOf([k.value for k in AlertKind]),
                         metadata={"description": _KINDS})


class RuleSchema(RuleCreateSchema):
    id = fields.Integer(dump_only=True)
    created_at = UtcDateTime()
    updated_at = UtcDateTime()


class RuleList(Schema):
    items = fields.List(fields.Nested(RuleSchema))


def _rules(found: list[AlertRule]) -> list[WithValues]:
    names = alerts.pool_names({rule.pool_id for rule in found})
    return [WithValues(rule, kind=rule.kind.value, severity=rule.severity.value,
                       pool=names.get(rule.pool_id) if rule.pool_id else None)
            for rule in found]


def _rule(rule: AlertRule) -> WithValues:
    return _rules([rule])[0]


@rules_blp.route("")
class Rules(MethodView):
    @admin_only
    @rules_blp.arguments(PageQuerySchema, location="query")
    @rules_blp.response(200, page_schema(RuleSchema))
    def get(self, query: dict[str, Any]) -> Any:
        """List alert rules, by kind."""
        found = alerts.list_rules(current_actor(), **query)
        return Page(_rules(found.items), found.page, found.per_page, found.total)

    @admin_only
    @rules_blp.arguments(RuleCreateSchema)
    @rules_blp.response(201, RuleSchema)
    @rules_blp.alt_response(422, schema=ErrorSchema, description="an invalid field, such as "
                            "a threshold outside the kind's range")
    def post(self, data: dict[str, Any]) -> Any:
        """Add an alert rule."""
        return _rule(alerts.create_rule(current_actor(), data))


@rules_blp.route("/recommended")
class RecommendedRules(MethodView):
    @admin_only
    @rules_blp.response(201, RuleList)
    def post(self) -> Any:
        """Add the recommended rules that are missing (none when all are there)."""
        return {"items": _rules(alerts.add_recommended_rules(current_actor()))}


@rules_blp.route("/<int:rule_id>")
class RuleItem(MethodView):
    @admin_only
    @rules_blp.response(200, RuleSchema)
    @rules_blp.alt_response(404, response="NOT_FOUND")
    def get(self, rule_id: int) -> Any:
        """Read an alert rule."""
        return _rule(alerts.get_rule(current_actor(), rule_id))

    @admin_only
    @rules_blp.arguments(RuleUpdateSchema)
    @rules_blp.response(200, RuleSchema)
    @rules_blp.alt_response(404, response="NOT_FOUND")
    @rules_blp.alt_response(422, schema=ErrorSchema, description="an invalid field")
    def patch(self, data: dict[str, Any], rule_id: int) -> Any:
        """Change an alert rule; its kind stays.  Turning it off resolves its open alerts
        without a notice."""
        return _rule(alerts.update_rule(current_actor(), rule_id, data))

    @admin_only
    @rules_blp.response(204)
    @rules_blp.alt_response(404, response="NOT_FOUND")
    def delete(self, rule_id: int) -> None:
        """Delete an alert rule with its alerts and their history."""
        alerts.delete_rule(current_actor(), rule_id)


# ----------------------------------------------------------------------------- alerts

class TransitionSchema(Schema):
    from_state = fields.String(allow_none=True, metadata={"description": "null: opened"})
    to_state = fields.String(metadata={"description": "pending, firing or resolved; firing "
                                                      "to firing is a reminder"})
    at = UtcDateTime()
    silenced = fields.Boolean(metadata={"description": "a silence held its notice back"})
    notified_at = UtcDateTime(allow_none=True, metadata={
        "description": "when its notice went out; null: none (yet)"})


class AlertSchema(Schema):
    """An alert as an administrator sees it; a client's lacks the keys marked
    administrators only."""

    id = fields.Integer()
    rule = fields.String(metadata={"description": "the rule's name"})
    kind = fields.String(metadata={"enum": [k.value for k in AlertKind]})
    severity = fields.String(metadata={"enum": [s.value for s in AlertSeverity]})
    state = fields.String(metadata={"enum": ["pending", "firing", "resolved"]})
    subject_kind = fields.String(metadata={"enum": ["node", "site", "pool"]})
    subject = fields.String(metadata={"description": "the node's name, the site's domain or "
                                                     "the pool's name"})
    site_id = fields.Integer(allow_none=True)
    value = fields.Float(allow_none=True, metadata={"description": "what was measured"})
    summary = fields.String()
    started_at = UtcDateTime()
    fired_at = UtcDateTime(allow_none=True)
    resolved_at = UtcDateTime(allow_none=True)
    acknowledged = fields.Boolean()
    acknowledged_at = UtcDateTime(allow_none=True)
    rule_id = fields.Integer(metadata={"description": "administrators only"})
    node_id = fields.Integer(allow_none=True, metadata={"description": "administrators only"})
    pool_id = fields.Integer(allow_none=True, metadata={"description": "administrators only"})
    acknowledged_by = fields.String(allow_none=True, metadata={
        "description": "administrators only: who acknowledged it"})


class AlertDetailSchema(AlertSchema):
    transitions = fields.List(fields.Nested(TransitionSchema))


class AlertQuerySchema(AlertFilters, PageQuerySchema):
    pass


def _alerts(found: list[Alert], actor: User, *, detail: bool = False) -> list[dict[str, Any]]:
    names = alerts.subject_names(found)
    by = alerts.acknowledgers(found) if actor.is_admin else {}
    shown = []
    for alert in found:
        item: dict[str, Any] = {
            "id": alert.id, "rule": alert.rule.name, "kind": alert.rule.kind.value,
            "severity": alert.rule.severity.value, "state": alert.state.value,
            "subject_kind": alert.subject_kind.value,
            "subject": names.get((alert.subject_kind, alert.subject_id), ""),
            "site_id": alert.site_id, "value": alert.value, "summary": alert.summary,
            "started_at": alert.started_at, "fired_at": alert.fired_at,
            "resolved_at": alert.resolved_at, "acknowledged": alert.acknowledged_at is not None,
            "acknowledged_at": alert.acknowledged_at}
        if actor.is_admin:
            item.update(rule_id=alert.rule_id, node_id=alert.node_id, pool_id=alert.pool_id,
                        acknowledged_by=by.get(alert.acknowledged_by_id or 0))
        if detail:
            item["transitions"] = alert.transitions
        shown.append(item)
    return shown


@blp.route("")
class Alerts(MethodView):
    @blp.arguments(AlertQuerySchema, location="query")
    @blp.response(200, page_schema(AlertSchema))
    @blp.alt_response(422, schema=ErrorSchema, description="an unknown filter value")
    def get(self, query: dict[str, Any]) -> Any:
        """List alerts, newest first: open ones unless ``state`` says otherwise."""
        actor = current_actor()
        found = alerts.list_alerts(actor, **query)
        return Page(_alerts(found.items, actor), found.page, found.per_page, found.total)


@blp.route("/<int:alert_id>")
class AlertItem(MethodView):
    @blp.response(200, AlertDetailSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, alert_id: int) -> Any:
        """Read an alert with its transitions."""
        actor = current_actor()
        return _alerts([alerts.get_alert(actor, alert_id)], actor, detail=True)[0]


@blp.route("/<int:alert_id>/acknowledge")
class AlertAcknowledge(MethodView):
    @blp.response(200, AlertSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(409, schema=ErrorSchema, description="the alert is resolved already")
    def post(self, alert_id: int) -> Any:
        """Acknowledge an alert: no more reminders until it resolves (acknowledging
        again changes nothing)."""
        actor = current_actor()
        return _alerts([alerts.acknowledge(actor, alert_id)], actor)[0]


# ----------------------------------------------------------------------------- silences

class SilenceUpdateSchema(Schema):
    """PATCH: the window and the reason; the target stays."""

    starts_at = QueryDateTime(metadata={"description": "ISO 8601; without an offset, UTC"})
    ends_at = QueryDateTime(metadata={"description": "ISO 8601; without an offset, UTC; at "
                                                     "most 31 days after the start"})
    reason = fields.String(metadata={"description": "at most 200 characters"})


class SilenceCreateSchema(SilenceUpdateSchema):
    node = fields.String(metadata={"description": "a node's name"})
    pool = fields.String(metadata={"description": "a pool's name: its nodes and sites too"})
    site = fields.String(metadata={"description": "a site's domain"})
    starts_at = QueryDateTime(metadata={"description": "ISO 8601; default now"})
    ends_at = QueryDateTime(required=True, metadata={
        "description": "ISO 8601; without an offset, UTC; at most 31 days after the start"})


class SilenceSchema(Schema):
    id = fields.Integer()
    target_kind = fields.String(metadata={"enum": ["node", "pool", "site"]})
    target = fields.String(metadata={"description": "the node's, pool's or site's name"})
    starts_at = UtcDateTime()
    ends_at = UtcDateTime()
    reason = fields.String()
    state = fields.String(metadata={"enum": list(alerts.SILENCE_STATES)})
    created_at = UtcDateTime()


class SilenceQuerySchema(SilenceFilters, PageQuerySchema):
    pass


def _silence(view: alerts.SilenceView) -> WithValues:
    return WithValues(view.silence, target_kind=view.target_kind, target=view.target_name,
                      state=view.state)


def _one_silence(silence: Silence) -> WithValues:
    return _silence(alerts.get_silence_view(current_actor(), silence.id))


@silences_blp.route("")
class Silences(MethodView):
    @admin_only
    @silences_blp.arguments(SilenceQuerySchema, location="query")
    @silences_blp.response(200, page_schema(SilenceSchema))
    @silences_blp.alt_response(422, schema=ErrorSchema, description="an unknown state")
    def get(self, query: dict[str, Any]) -> Any:
        """List silences, the latest to end first."""
        found = alerts.list_silences(current_actor(), **query)
        return Page([_silence(view) for view in found.items], found.page, found.per_page,
                    found.total)

    @admin_only
    @silences_blp.arguments(SilenceCreateSchema)
    @silences_blp.response(201, SilenceSchema)
    @silences_blp.alt_response(422, schema=ErrorSchema, description="an invalid field: not "
                               "exactly one target, an unknown name, a bad window")
    def post(self, data: dict[str, Any]) -> Any:
        """Silence one node, pool or site for a window."""
        return _one_silence(alerts.create_silence(current_actor(), data))


@silences_blp.route("/<int:silence_id>")
class SilenceItem(MethodView):
    @admin_only
    @silences_blp.response(200, SilenceSchema)
    @silences_blp.alt_response(404, response="NOT_FOUND")
    def get(self, silence_id: int) -> Any:
        """Read a silence."""
        return _silence(alerts.get_silence_view(current_actor(), silence_id))

    @admin_only
    @silences_blp.arguments(SilenceUpdateSchema)
    @silences_blp.response(200, SilenceSchema)
    @silences_blp.alt_response(404, response="NOT_FOUND")
    @silences_blp.alt_response(422, schema=ErrorSchema, description="an invalid field")
    def patch(self, data: dict[str, Any], silence_id: int) -> Any:
        """Change a silence's window or reason."""
        return _one_silence(alerts.update_silence(current_actor(), silence_id, data))

    @admin_only
    @silences_blp.response(204)
    @silences_blp.alt_response(404, response="NOT_FOUND")
    def delete(self, silence_id: int) -> None:
        """Delete a silence; what it held back goes out if it still holds."""
        alerts.delete_silence(current_actor(), silence_id)


@silences_blp.route("/<int:silence_id>/end")
class SilenceEnd(MethodView):
    @admin_only
    @silences_blp.response(200, SilenceSchema)
    @silences_blp.alt_response(404, response="NOT_FOUND")
    @silences_blp.alt_response(409, schema=ErrorSchema, description="it has ended already")
    def post(self, silence_id: int) -> Any:
        """End a silence now (an upcoming one never starts)."""
        return _one_silence(alerts.end_silence(current_actor(), silence_id))
