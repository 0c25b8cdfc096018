"""``/api/v1/users/{id}/domains`` (administrators): domains given to one client, so
that no other client can claim names with them, under them or over them."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields

from app.api.auth import ApiBlueprint, admin_only, current_actor
from app.api.schemas import ErrorSchema, UtcDateTime, WithValues
from app.services import domain_grants

blp = ApiBlueprint(
    "domains", __name__, url_prefix="/api/v1/users",
    description="Domains given to one client (administrators only).",
)


class DomainGrantSchema(Schema):
    id = fields.Integer(dump_only=True)
    name = fields.String(required=True, metadata={
        "description": "a registered domain (not a public suffix); its names and the "
                       "wildcards over them are this client's only"})
    granted_by = fields.String(dump_only=True)
    created_at = UtcDateTime()


class GrantedSchema(DomainGrantSchema):
    in_use_by_others = fields.List(fields.String(), dump_only=True, metadata={
        "description": "names under the domain that other clients' sites use already: "
                       "they keep them until an administrator acts"})


class DomainGrantList(Schema):
    items = fields.List(fields.Nested(DomainGrantSchema))


@blp.route("/<int:user_id>/domains")
class Grants(MethodView):
    @admin_only
    @blp.response(200, DomainGrantList)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, user_id: int) -> dict[str, Any]:
        """The domains given to this user."""
        return {"items": domain_grants.list_grants(current_actor(), user_id)}

    @admin_only
    @blp.arguments(DomainGrantSchema)
    @blp.response(201, GrantedSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(422, schema=ErrorSchema, description="not a domain one may give, or "
                                                           "given to someone already")
    def post(self, data: dict[str, Any], user_id: int) -> WithValues:
        """Give a domain to this user."""
        row, in_use = domain_grants.grant(current_actor(), user_id, data["name"])
        return WithValues(row, in_use_by_others=in_use)


@blp.route("/<int:user_id>/domains/<int:grant_id>")
class Grant(MethodView):
    @admin_only
    @blp.response(204)
    @blp.alt_response(404, response="NOT_FOUND")
    def delete(self, user_id: int, grant_id: int) -> None:
        """Take the domain back: its names are open to every client again."""
        domain_grants.revoke(current_actor(), user_id, grant_id)
