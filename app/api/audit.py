"""``/api/v1/audit`` (administrators): who did what, newest first."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields

from app.api.auth import ApiBlueprint, admin_only, current_actor
from app.api.schemas import PageQuerySchema, UtcDateTime, page_schema
from app.services import audit
from app.web.filters import AuditFilters

blp = ApiBlueprint(
    "audit", __name__, url_prefix="/api/v1/audit",
    description="The audit trail (administrators only).",
)


class AuditEntrySchema(Schema):
    id = fields.Integer(dump_only=True)
    username = fields.String(dump_only=True, metadata={"description": "'system' for the CLI"})
    action = fields.String(dump_only=True, metadata={"description": "e.g. site.create"})
    object_type = fields.String(dump_only=True)
    object_id = fields.String(dump_only=True)
    details = fields.Dict(dump_only=True)
    ip = fields.String(dump_only=True)
    at = UtcDateTime()


class AuditQuerySchema(AuditFilters, PageQuerySchema):
    pass


@blp.route("")
class AuditEntries(MethodView):
    @admin_only
    @blp.arguments(AuditQuerySchema, location="query")
    @blp.response(200, page_schema(AuditEntrySchema))
    def get(self, query: dict[str, Any]) -> Any:
        """List audit entries, filtered."""
        return audit.list_entries(current_actor(), **query)
