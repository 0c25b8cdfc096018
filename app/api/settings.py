"""``/api/v1/settings/security`` (administrators): how people sign in;
``/api/v1/settings/backend-policy``: where clients' backends may point."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields

from app.api.auth import ApiBlueprint, admin_only, current_actor
from app.api.schemas import StrictBoolean
from app.services import settings

blp = ApiBlueprint(
    "settings", __name__, url_prefix="/api/v1/settings",
    description="Sign-in settings and the backend address policy (administrators only).",
)


class SecuritySettingsSchema(Schema):
    require_admin_two_factor = StrictBoolean(metadata={
        "description": "administrators must sign in with a second factor; one who has none "
                       "is held at its set-up after the password (API tokens keep working)"})


@blp.route("/security")
class SecuritySettings(MethodView):
    @admin_only
    @blp.response(200, SecuritySettingsSchema)
    def get(self) -> Any:
        """The sign-in settings in force."""
        return settings.get_security_settings(current_actor())

    @admin_only
    @blp.arguments(SecuritySettingsSchema)
    @blp.response(200, SecuritySettingsSchema)
    def put(self, data: dict[str, Any]) -> Any:
        """Change the sign-in settings; keys left out keep their value."""
        return settings.update_security_settings(current_actor(), data)


class EffectiveEntrySchema(Schema):
    network = fields.String()
    reason = fields.String(metadata={
        "description": "why it is denied: link-local, loopback, this host, cloud metadata, "
                       "a node's address, denied here or BACKEND_DENIED_NETWORKS"})
    state = fields.String(metadata={"enum": ["denied", "partly_allowed", "allowed"]})
    allowed_by = fields.List(fields.String())


class PolicyNetworksSchema(Schema):
    denied_networks = fields.List(fields.String())
    allowed_networks = fields.List(fields.String())


class BackendPolicySchema(Schema):
    denied_networks = fields.List(fields.String(), allow_none=True, metadata={
        "description": "CIDRs denied besides those always denied (link-local, loopback, "
                       "this host, cloud metadata, the nodes' addresses); null restores "
                       "BACKEND_DENIED_NETWORKS"})
    allowed_networks = fields.List(fields.String(), allow_none=True, metadata={
        "description": "exceptions to every denied network (a metadata address only when "
                       "listed alone); null restores BACKEND_ALLOWED_NETWORKS"})
    overridden = fields.List(fields.String(), dump_only=True)
    environment = fields.Nested(PolicyNetworksSchema, dump_only=True)
    effective = fields.List(fields.Nested(EffectiveEntrySchema), dump_only=True, metadata={
        "description": "every denied network and whether an allowed one opens it"})


@blp.route("/backend-policy")
class BackendPolicy(MethodView):
    @admin_only
    @blp.response(200, BackendPolicySchema)
    def get(self) -> Any:
        """The networks backends may not use and the exceptions, as a site save
        checks them."""
        return settings.get_backend_policy(current_actor())

    @admin_only
    @blp.arguments(BackendPolicySchema)
    @blp.response(200, BackendPolicySchema)
    @blp.alt_response(422, response="UNPROCESSABLE_ENTITY")
    def put(self, data: dict[str, Any]) -> Any:
        """Change the denied or allowed networks (keys left out keep their value);
        sites saved from now on are checked against them."""
        return settings.update_backend_policy(current_actor(), data)
