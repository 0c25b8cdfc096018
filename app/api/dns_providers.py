"""``/api/v1/dns-providers`` (administrators): where DNS-01 records of each zone are
written by RFC 2136 dynamic update.

The TSIG secret is write-only: answers say whether one is set, never what it is.
"""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields

from app.api.auth import ApiBlueprint, admin_only, current_actor
from app.api.schemas import ErrorSchema, PageQuerySchema, page_schema
from app.models import DnsProvider
from app.services import dns_providers
from app.services.dns_providers import TSIG_ALGORITHMS

blp = ApiBlueprint(
    "dns_providers", __name__, url_prefix="/api/v1/dns-providers",
    description="Servers that accept DNS-01 records for a zone (administrators only).",
)


class DnsProviderUpdateSchema(Schema):
    """PUT and PATCH alike: keys left out keep their value (an empty secret too)."""

    name = fields.String()
    kind = fields.String(metadata={"enum": list(dns_providers.KINDS),
                                   "description": "default rfc2136"})
    zone = fields.String(metadata={
        "description": "DNS-01 records of every domain under it go here; the longest "
                       "matching zone wins"})
    server = fields.String(metadata={"description": "IP address or name of the primary server"})
    port = fields.Integer(strict=True, metadata={"description": "default 53"})
    tsig_name = fields.String(metadata={"description": "TSIG key name, e.g. acme-key"})
    tsig_algorithm = fields.String(metadata={"enum": list(TSIG_ALGORITHMS),
                                             "description": "default hmac-sha256"})
    tsig_secret = fields.String(load_only=True,
                                metadata={"description": "write-only; base64"})


class DnsProviderCreateSchema(DnsProviderUpdateSchema):
    name = fields.String(required=True)
    zone = fields.String(required=True)
    server = fields.String(required=True)
    tsig_name = fields.String(required=True)
    tsig_secret = fields.String(required=True, load_only=True,
                                metadata={"description": "write-only; base64"})


class DnsProviderSchema(DnsProviderUpdateSchema):
    class Meta:
        exclude = ("tsig_secret",)

    id = fields.Integer(dump_only=True)
    has_tsig_secret = fields.Function(lambda row: bool(row.tsig_secret), dump_only=True,
                                      metadata={"type": "boolean"})


class DnsProviderCheckSchema(Schema):
    ok = fields.Boolean(required=True)
    detail = fields.String(required=True, metadata={"description": "what the server did"})


@blp.route("")
class DnsProviders(MethodView):
    @admin_only
    @blp.arguments(PageQuerySchema, location="query")
    @blp.response(200, page_schema(DnsProviderSchema))
    def get(self, query: dict[str, Any]) -> Any:
        """List DNS providers, by zone."""
        return dns_providers.list_providers(current_actor(), **query)

    @admin_only
    @blp.arguments(DnsProviderCreateSchema)
    @blp.response(201, DnsProviderSchema)
    def post(self, data: dict[str, Any]) -> DnsProvider:
        """Register the server and TSIG key of a zone."""
        return dns_providers.create_provider(current_actor(), data)


@blp.route("/<int:provider_id>")
class DnsProviderItem(MethodView):
    @admin_only
    @blp.response(200, DnsProviderSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, provider_id: int) -> DnsProvider:
        """Read a DNS provider (without its secret)."""
        return dns_providers.get_provider(current_actor(), provider_id)

    @admin_only
    @blp.arguments(DnsProviderUpdateSchema)
    @blp.response(200, DnsProviderSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(409, schema=ErrorSchema, description="a new zone would leave "
                      "certificates that renew with DNS-01 without a provider")
    def put(self, data: dict[str, Any], provider_id: int) -> DnsProvider:
        """Update a DNS provider; keys left out keep their value."""
        return dns_providers.update_provider(current_actor(), provider_id, data)

    @admin_only
    @blp.arguments(DnsProviderUpdateSchema)
    @blp.response(200, DnsProviderSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(409, schema=ErrorSchema, description="a new zone would leave "
                      "certificates that renew with DNS-01 without a provider")
    def patch(self, data: dict[str, Any], provider_id: int) -> DnsProvider:
        """Update some fields of a DNS provider."""
        return dns_providers.update_provider(current_actor(), provider_id, data)

    @admin_only
    @blp.response(204)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(409, schema=ErrorSchema,
                      description="certificates renew with DNS-01 through this zone")
    def delete(self, provider_id: int) -> None:
        """Delete a DNS provider; domains of its zone can no longer use DNS-01."""
        dns_providers.delete_provider(current_actor(), provider_id)


@blp.route("/<int:provider_id>/check")
class DnsProviderCheck(MethodView):
    @admin_only
    @blp.response(200, DnsProviderCheckSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def post(self, provider_id: int) -> Any:
        """Write, see served and remove a test TXT record now; ``ok`` false says why."""
        ok, detail = dns_providers.check_provider(current_actor(), provider_id)
        return {"ok": ok, "detail": detail}
