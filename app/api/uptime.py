"""``/api/v1/sites/{id}/uptime``: whether a site answers through each node of its
pool, its uptime over 24 hours, 7 and 30 days, and the points of its charts."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields
from marshmallow.validate import OneOf

from app.api.auth import ApiBlueprint, current_actor
from app.api.schemas import UtcDateTime
from app.services import uptime

blp = ApiBlueprint(
    "uptime", __name__, url_prefix="/api/v1",
    description="Site checks: each site asked for through each node of its pool every "
                "minute, with its own name as Host header and SNI. Up is an HTTP answer "
                "below 500.",
)

RANGES = list(uptime.WINDOWS)


class UptimeQuerySchema(Schema):
    range = fields.String(validate=OneOf(RANGES), metadata={
        "description": "the charts' range (24h by default)", "enum": RANGES})


class WindowSchema(Schema):
    window = fields.String(metadata={"enum": RANGES})
    checks = fields.Integer()
    failures = fields.Integer()
    percent = fields.Float(allow_none=True, metadata={
        "description": "share of checks that were up; null without checks"})


class NodeCheckSchema(Schema):
    node = fields.String(metadata={
        "description": "the node's name for administrators, \"node 1 of 3\" for clients"})
    node_id = fields.Integer(allow_none=True, metadata={"description": "administrators only"})
    status = fields.String(metadata={
        "enum": ["up", "down", "unreachable", "unchecked"],
        "description": "unreachable: the control plane could not reach the node over SSH, "
                       "so the site was not checked through it (such checks count in no "
                       "uptime); unchecked: never checked through it"})
    checked_at = UtcDateTime(allow_none=True)
    status_code = fields.Integer(allow_none=True)
    response_ms = fields.Float(allow_none=True, metadata={
        "description": "from the connection to the status line, TLS included"})
    error = fields.String(metadata={"description": "why it was down or not checked, in words"})
    cert_sha256 = fields.String(allow_none=True, metadata={
        "description": "SHA-256 of the certificate the node served (TLS sites)"})
    cert_not_after = UtcDateTime(allow_none=True)
    cert_matches = fields.Boolean(allow_none=True, metadata={
        "description": "whether it is the certificate issued for the site"})


class PointSchema(Schema):
    at = UtcDateTime(metadata={"description": "start of the step"})
    checks = fields.Integer()
    uptime_percent = fields.Float(allow_none=True)
    response_ms = fields.Float(allow_none=True, metadata={"description": "average"})


class HistorySchema(Schema):
    range = fields.String(metadata={"enum": RANGES})
    step_seconds = fields.Integer()
    points = fields.List(fields.Nested(PointSchema))


class UptimeSchema(Schema):
    site_id = fields.Integer()
    windows = fields.List(fields.Nested(WindowSchema), metadata={
        "description": "uptime over the last 24 hours, 7 days and 30 days"})
    nodes = fields.List(fields.Nested(NodeCheckSchema), metadata={
        "description": "the last check through each enabled node of the site's pool"})
    history = fields.Nested(HistorySchema)


@blp.route("/sites/<int:site_id>/uptime")
class SiteUptime(MethodView):
    @blp.arguments(UptimeQuerySchema, location="query")
    @blp.response(200, UptimeSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, query: dict[str, Any], site_id: int) -> Any:
        """The site's uptime, its last check through each node, and its chart points."""
        return uptime.site_uptime(current_actor(), site_id, query.get("range"))
