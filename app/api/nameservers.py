"""Nameserver checks: ``/api/v1/sites/{id}/nameservers`` (the site's owner or an
administrator) and checking now, in the background; the nameservers expected per zone
(``/api/v1/nameserver-zones``) and everywhere, with the resolvers to ask
(``/api/v1/settings/nameservers``), for administrators."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields

from app.api.auth import ApiBlueprint, admin_only, current_actor
from app.api.schemas import PageQuerySchema, UtcDateTime, page_schema
from app.models import NameserverStatus, ZoneNameservers
from app.services import nameservers
from app.web.nameserver_pages import limit_nameserver_checks

blp = ApiBlueprint(
    "nameservers", __name__, url_prefix="/api/v1",
    description="Whether each site's names sit in zones delegated to the expected "
                "nameservers (NS records, asked of the configured DNS resolvers).",
)

_INSTANT = {"format": "date-time"}
_NAMES = {"description": "host names, e.g. ns1.example.net"}


class NameserverCheckSchema(Schema):
    hostname = fields.String(metadata={"description": "one of the site's names"})
    zone = fields.String(metadata={"description": "the zone it is in (empty if not found)"})
    status = fields.String(metadata={"enum": [status.value for status in NameserverStatus]})
    expected = fields.List(fields.String(), metadata={
        "description": "the zone's own list, else the global one"})
    found = fields.List(fields.String(), metadata={"description": "the zone's NS records"})
    error = fields.String(metadata={
        "description": "why the check failed, or what differs, in words"})
    checked_at = fields.String(metadata=_INSTANT)


class SiteNameserversSchema(Schema):
    site_id = fields.Integer()
    status = fields.String(metadata={
        "enum": ["unchecked", *(status.value for status in NameserverStatus)],
        "description": "the worst of the names' (mismatch, then error, then ok)"})
    checked_at = fields.String(allow_none=True, metadata={
        **_INSTANT, "description": "when the oldest of these results was found"})
    checking_since = fields.String(allow_none=True, metadata={
        **_INSTANT, "description": "when the check of the site running now started; "
                                   "null when none runs"})
    checks = fields.List(fields.Nested(NameserverCheckSchema))


class ZoneUpdateSchema(Schema):
    zone = fields.String(metadata={"description": "e.g. example.com"})
    nameservers = fields.List(fields.String(), metadata=_NAMES)


class ZoneCreateSchema(ZoneUpdateSchema):
    zone = fields.String(required=True, metadata={"description": "e.g. example.com"})
    nameservers = fields.List(fields.String(), required=True, metadata=_NAMES)


class ZoneSchema(ZoneUpdateSchema):
    id = fields.Integer(dump_only=True)
    created_at = UtcDateTime()
    updated_at = UtcDateTime()


class ResolverListSchema(Schema):
    resolvers = fields.List(fields.String())


class NameserverSettingsSchema(Schema):
    nameservers = fields.List(fields.String(), metadata={
        "description": "the NS records every zone is expected to have, unless it has its "
                       "own list; empty: only zones with a list are judged"})
    resolvers = fields.List(fields.String(), allow_none=True, metadata={
        "description": "the DNS servers asked (addr[:port]); null restores DNS_RESOLVERS; "
                       "none: nameserver checks and the ACME pre-check do not run"})
    resolver_problem = fields.String(dump_only=True, metadata={
        "description": "why the resolvers in force cannot be used, if they cannot"})
    overridden = fields.List(fields.String(), dump_only=True)
    environment = fields.Nested(ResolverListSchema, dump_only=True)
    zones = fields.Integer(dump_only=True, metadata={
        "description": "how many zones have a list of their own"})


@blp.route("/sites/<int:site_id>/nameservers")
class SiteNameservers(MethodView):
    @blp.response(200, SiteNameserversSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, site_id: int) -> Any:
        """The last check of each of the site's names."""
        return nameservers.nameservers_to_dict(
            nameservers.site_nameservers(current_actor(), site_id))


@blp.route("/sites/<int:site_id>/nameservers/check")
class SiteNameserversCheck(MethodView):
    @limit_nameserver_checks
    @blp.response(202, SiteNameserversSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(429, response="TOO_MANY_REQUESTS")
    def post(self, site_id: int) -> Any:
        """Check the site's names now, in the background: answers at once with the
        last results and ``checking_since`` set (a check of the site already running
        is joined, not repeated); ``GET .../nameservers`` has the new results once
        ``checking_since`` is null again."""
        return nameservers.nameservers_to_dict(
            nameservers.request_check(current_actor(), site_id).nameservers)


@blp.route("/nameserver-zones")
class Zones(MethodView):
    @admin_only
    @blp.arguments(PageQuerySchema, location="query")
    @blp.response(200, page_schema(ZoneSchema))
    def get(self, query: dict[str, Any]) -> Any:
        """List the zones with their own expected nameservers."""
        return nameservers.list_zones(current_actor(), **query)

    @admin_only
    @blp.arguments(ZoneCreateSchema)
    @blp.response(201, ZoneSchema)
    @blp.alt_response(422, response="UNPROCESSABLE_ENTITY")
    def post(self, data: dict[str, Any]) -> ZoneNameservers:
        """Expect these nameservers for the zone (and the zones under it without a
        list of their own) instead of the global list."""
        return nameservers.create_zone(current_actor(), data)


@blp.route("/nameserver-zones/<int:zone_id>")
class Zone(MethodView):
    @admin_only
    @blp.response(200, ZoneSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, zone_id: int) -> ZoneNameservers:
        """Read a zone's expected nameservers."""
        return nameservers.get_zone(current_actor(), zone_id)

    @admin_only
    @blp.arguments(ZoneUpdateSchema)
    @blp.response(200, ZoneSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(422, response="UNPROCESSABLE_ENTITY")
    def put(self, data: dict[str, Any], zone_id: int) -> ZoneNameservers:
        """Change the zone or its nameservers; keys left out keep their value."""
        return nameservers.update_zone(current_actor(), zone_id, data)

    @admin_only
    @blp.arguments(ZoneUpdateSchema)
    @blp.response(200, ZoneSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(422, response="UNPROCESSABLE_ENTITY")
    def patch(self, data: dict[str, Any], zone_id: int) -> ZoneNameservers:
        """Change some fields of a zone's expected nameservers."""
        return nameservers.update_zone(current_actor(), zone_id, data)

    @admin_only
    @blp.response(204)
    @blp.alt_response(404, response="NOT_FOUND")
    def delete(self, zone_id: int) -> None:
        """Hold the zone's names to the global list (or a parent zone's) again."""
        nameservers.delete_zone(current_actor(), zone_id)


@blp.route("/settings/nameservers")
class NameserverSettings(MethodView):
    @admin_only
    @blp.response(200, NameserverSettingsSchema)
    def get(self) -> Any:
        """The expected nameservers and the DNS resolvers in force."""
        return nameservers.get_settings(current_actor())

    @admin_only
    @blp.arguments(NameserverSettingsSchema)
    @blp.response(200, NameserverSettingsSchema)
    @blp.alt_response(422, response="UNPROCESSABLE_ENTITY")
    def put(self, data: dict[str, Any]) -> Any:
        """Change the expected nameservers or the resolvers; keys left out keep their
        value."""
        return nameservers.update_settings(current_actor(), data)
