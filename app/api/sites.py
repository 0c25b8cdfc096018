"""``/api/v1/sites``: clients manage their own sites, admins every site.

Answers come from ``services.sites.site_to_dict``: clients receive ``ClientSite``,
admins ``Site`` (the same plus the owner).
"""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields

from app.api.auth import ApiBlueprint, current_actor
from app.api.schemas import (
    ErrorSchema,
    PageQuerySchema,
    RowId,
    StrictBoolean,
    page_schema,
)
from app.engines import engine_names
from app.models import BackendProtocol, GeoMode, Site, SslMode, User, WafLevel
from app.services import rendering, sites
from app.services.common import Page
from app.web.filters import SiteFilters

blp = ApiBlueprint(
    "sites", __name__, url_prefix="/api/v1/sites",
    description="A client's domain in front of backends, with every proxy setting. "
                "Another client's site answers 404.",
)


def _choices(enum_cls: Any) -> dict[str, Any]:
    """Document the accepted values; the service checks them (with its own message)."""
    return {"enum": [member.value for member in enum_cls]}


class BackendSchema(Schema):
    host = fields.String(required=True, metadata={"description": "hostname or IP address"})
    port = fields.Integer(strict=True, required=True)
    weight = fields.Integer(strict=True, metadata={"description": "1-100, default 1"})


class BasicAuthUserSchema(Schema):
    username = fields.String(required=True)
    password = fields.String(
        load_only=True,
        metadata={"description": "write-only; omit to keep an existing user's password"},
    )


class CacheSchema(Schema):
    enabled = StrictBoolean()
    ttl = fields.Integer(strict=True, metadata={"description": "seconds"})


class GeoSchema(Schema):
    mode = fields.String(metadata=_choices(GeoMode))
    countries = fields.List(fields.String(), metadata={"description": "ISO 3166 alpha-2 codes"})


class RateLimitSchema(Schema):
    requests_per_second = fields.Integer(strict=True, required=True)
    burst = fields.Integer(strict=True)


class SiteSettingsSchema(Schema):
    """Fields a site is written and read with."""

    domain = fields.String()
    aliases = fields.List(fields.String())
    backends = fields.List(fields.Nested(BackendSchema))
    backend_protocol = fields.String(metadata=_choices(BackendProtocol))
    pool = fields.String(metadata={"description": "pool name (GET /api/v1/pools)"})
    ssl_mode = fields.String(metadata=_choices(SslMode))
    acme_challenge = fields.String(metadata={
        "enum": ["http-01", "dns-01"],
        "description": "how a letsencrypt certificate is validated (default http-01)"})
    force_https = StrictBoolean()
    hsts = StrictBoolean()
    http2 = StrictBoolean()
    websocket = StrictBoolean()
    waf_level = fields.String(metadata=_choices(WafLevel))
    cache = fields.Nested(CacheSchema)
    geo = fields.Nested(GeoSchema)
    ip_allow = fields.List(fields.String(), metadata={"description": "CIDRs"})
    ip_deny = fields.List(fields.String(), metadata={"description": "CIDRs"})
    basic_auth = fields.List(fields.Nested(BasicAuthUserSchema))
    rate_limit = fields.Nested(RateLimitSchema, allow_none=True,
                               metadata={"description": "null: no limit"})
    headers = fields.Dict(keys=fields.String(), values=fields.String(),
                          metadata={"description": "response headers added: {name: value}"})
    blocked = StrictBoolean(metadata={"description": "set by administrators only"})
    blocked_reason = fields.String(metadata={"description": "set by administrators only"})


class SiteUpdateSchema(SiteSettingsSchema):
    """PUT and PATCH alike: keys left out keep their value."""

    owner_id = RowId(metadata={"description": "administrators only: the owner"})


class SiteCreateSchema(SiteUpdateSchema):
    domain = fields.String(required=True)
    backends = fields.List(fields.Nested(BackendSchema), required=True)


class ClientSiteSchema(SiteSettingsSchema):
    """A site as its owner (a client) sees it."""

    id = fields.Integer(dump_only=True)
    status = fields.String(dump_only=True, metadata={"description": "last deployment outcome"})
    config_version = fields.Integer(dump_only=True)
    deployed_nodes = fields.Integer(dump_only=True, metadata={
        "description": "active nodes of the pool serving this config_version"})
    target_nodes = fields.Integer(dump_only=True,
                                  metadata={"description": "active nodes of the pool"})
    refused_reason = fields.String(dump_only=True, metadata={
        "description": "why a node refused this config_version (its previous version "
                       "stays live); empty when none did"})
    deploy_warning = fields.String(dump_only=True, metadata={
        "description": "what the last deployment saw when it asked the proxy for the "
                       "site (its backend answering 5xx, say); empty when all was well"})
    created_at = fields.String(dump_only=True, metadata={"format": "date-time"})
    updated_at = fields.String(dump_only=True, metadata={"format": "date-time"})


class SiteSchema(ClientSiteSchema):
    """A site as an administrator sees it."""

    owner_id = fields.Integer(dump_only=True)
    owner = fields.String(dump_only=True, metadata={"description": "owner's username"})


class SiteQuerySchema(SiteFilters, PageQuerySchema):
    pass


SitePageSchema = page_schema(SiteSchema)
# The answers are dumped with the admin schema (a client's dict simply lacks the
# owner keys); the document says which shape each role receives.  anyOf, not oneOf:
# neither shape forbids extra keys, so every answer is valid under both.
_ONE_SITE = {"anyOf": [ClientSiteSchema, SiteSchema]}
_SITE_ANSWER_DOC = {"content": {"application/json": {"schema": _ONE_SITE}},
                    "description": "ClientSite for clients, Site for administrators"}


def _answer(site: Site, actor: User) -> dict[str, Any]:
    return sites.site_to_dict(site, admin=actor.is_admin)


@blp.route("")
class Sites(MethodView):
    @blp.arguments(SiteQuerySchema, location="query")
    @blp.response(200, SitePageSchema)
    @blp.doc(responses={200: {"description": "items are ClientSite for clients, Site for "
                                             "administrators"}})
    def get(self, query: dict[str, Any]) -> Any:
        """List sites: a client's own, or every site for an administrator."""
        actor = current_actor()
        found = sites.list_sites(actor, **query)
        return Page(items=[_answer(site, actor) for site in found.items], page=found.page,
                    per_page=found.per_page, total=found.total)

    @blp.arguments(SiteCreateSchema)
    @blp.response(201, SiteSchema)
    @blp.doc(responses={201: _SITE_ANSWER_DOC})
    @blp.alt_response(409, schema=ErrorSchema, description="site quota reached")
    def post(self, data: dict[str, Any]) -> Any:
        """Create a site (owned by the caller, or by ``owner_id`` for administrators)."""
        actor = current_actor()
        return _answer(sites.create_site(actor, data), actor)


@blp.route("/<int:site_id>")
class SiteItem(MethodView):
    @blp.response(200, SiteSchema)
    @blp.doc(responses={200: _SITE_ANSWER_DOC})
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, site_id: int) -> Any:
        """Read a site."""
        actor = current_actor()
        return _answer(sites.get_site(actor, site_id), actor)

    @blp.arguments(SiteUpdateSchema)
    @blp.response(200, SiteSchema)
    @blp.doc(responses={200: _SITE_ANSWER_DOC})
    @blp.alt_response(404, response="NOT_FOUND")
    def put(self, data: dict[str, Any], site_id: int) -> Any:
        """Update a site; keys left out keep their value."""
        actor = current_actor()
        return _answer(sites.update_site(actor, site_id, data), actor)

    @blp.arguments(SiteUpdateSchema)
    @blp.response(200, SiteSchema)
    @blp.doc(responses={200: _SITE_ANSWER_DOC})
    @blp.alt_response(404, response="NOT_FOUND")
    def patch(self, data: dict[str, Any], site_id: int) -> Any:
        """Update some fields of a site."""
        actor = current_actor()
        return _answer(sites.update_site(actor, site_id, data), actor)

    @blp.response(204)
    @blp.alt_response(404, response="NOT_FOUND")
    def delete(self, site_id: int) -> None:
        """Delete a site."""
        sites.delete_site(current_actor(), site_id)


class ConfigQuerySchema(Schema):
    engine = fields.String(load_default="nginx",
                           metadata={"enum": engine_names()})


class RenderedConfigSchema(Schema):
    engine = fields.String()
    node = fields.String(metadata={"description": "the pool's node the files are for, or "
                                                  "an example node of that engine"})
    config_dir = fields.String()
    include_line = fields.String(metadata={"description": "what the node's main config "
                                                          "needs to load config_dir"})
    missing = fields.List(fields.String(), metadata={
        "description": "settings of this site that the engine cannot honour"})
    files = fields.Dict(keys=fields.String(), values=fields.String(), metadata={
        "description": "path relative to config_dir -> content (private keys withheld)"})


@blp.route("/<int:site_id>/config")
class SiteConfig(MethodView):
    @blp.arguments(ConfigQuerySchema, location="query")
    @blp.response(200, RenderedConfigSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, query: dict[str, Any], site_id: int) -> Any:
        """Preview the files a node of this engine would get for the site."""
        return rendering.preview(current_actor(), site_id, query["engine"])
