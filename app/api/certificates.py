"""``/api/v1/sites/{id}/certificate``: what a site serves over TLS, "issue / renew
now", and uploading a chain and key; ``/api/v1/settings/acme`` for administrators."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields

from app.api.auth import ApiBlueprint, admin_only, current_actor
from app.extensions import limit_certificate_requests, limit_deploy_requests
from app.services import certificates, settings

blp = ApiBlueprint(
    "certificates", __name__, url_prefix="/api/v1",
    description="TLS certificates: self-signed, uploaded, or from an ACME CA (HTTP-01 "
                "through every node of the site's pool, or DNS-01), renewed before expiry.",
)

STATUSES = ["none", "pending", "valid", "failed"]
ERROR_CODES = ["dns_not_pointing", "ca_refused", "rate_limited", "challenge_unreachable",
               "dns_provider", "ca_unreachable", "invalid_request", "internal"]
# The service writes these times itself (ISO 8601 with the offset); the document says
# so, and generated clients read them as instants rather than text.
_INSTANT = {"format": "date-time"}


class PrecheckSchema(Schema):
    state = fields.String(metadata={
        "enum": ["on", "skipped", "not_applicable"],
        "description": "on: an HTTP-01 order first checks that every name resolves to one "
                       "of the pool's nodes; skipped: no DNS resolvers are configured; "
                       "not_applicable: not an HTTP-01 ACME site"})
    message = fields.String(metadata={"description": "the same in words"})


class CertificateSchema(Schema):
    site_id = fields.Integer()
    ssl_mode = fields.String(metadata={"enum": ["none", "self_signed", "letsencrypt",
                                                "custom"]})
    status = fields.String(metadata={
        "enum": STATUSES,
        "description": "outcome of the latest attempt: pending while one runs (and "
                       "until the new certificate is deployed), none before the first"})
    provider = fields.String(allow_none=True,
                             metadata={"enum": ["self_signed", "uploaded", "acme"]})
    challenge = fields.String(allow_none=True, metadata={"enum": ["http-01", "dns-01"]})
    domains = fields.List(fields.String())
    serving = fields.Boolean(metadata={"description": "a certificate is on the nodes"})
    not_before = fields.String(allow_none=True, metadata=_INSTANT)
    not_after = fields.String(allow_none=True, metadata=_INSTANT)
    renew_after = fields.String(allow_none=True, metadata={
        **_INSTANT, "description": "when the scheduler renews it"})
    issuer = fields.String()
    serial = fields.String()
    fingerprint_sha256 = fields.String()
    last_attempt_at = fields.String(allow_none=True, metadata=_INSTANT)
    next_attempt_at = fields.String(allow_none=True, metadata={
        **_INSTANT, "description": "after a failure: when it is tried again"})
    last_error = fields.String()
    last_error_code = fields.String(metadata={"enum": ["", *ERROR_CODES, "invalid"]})
    precheck = fields.Nested(PrecheckSchema, metadata={
        "description": "whether orders are checked against DNS before the CA is asked"})


class UploadSchema(Schema):
    # Not required here: the service says "is required" after checking the site is
    # the caller's (another client's site answers 404 whatever the body).
    chain_pem = fields.String(load_default="", metadata={
        "description": "PEM certificates, the site's certificate first, then the "
                       "intermediates"})
    key_pem = fields.String(load_default="", load_only=True, metadata={
        "description": "PEM private key (unencrypted); write-only"})


class AcmeSettingsSchema(Schema):
    directory_url = fields.String(metadata={"description": "https:// ACME directory; "
                                                           "empty restores the default"})
    email = fields.String(metadata={"description": "account contact; may be empty"})
    ca_bundle_pem = fields.String(metadata={
        "description": "PEM bundle of the CA's TLS roots (private CAs); empty for the "
                       "system's trust store or ACME_CA_BUNDLE"})
    ca_bundle_path = fields.String(dump_only=True)
    overridden = fields.List(fields.String(), dump_only=True)


@blp.route("/sites/<int:site_id>/certificate")
class SiteCertificate(MethodView):
    @blp.response(200, CertificateSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, site_id: int) -> Any:
        """The site's certificate: status, names, expiry, last attempt and error."""
        return certificates.certificate_to_dict(
            certificates.get_site_certificate(current_actor(), site_id))

    @limit_certificate_requests
    @blp.response(202, CertificateSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(409, response="CONFLICT")
    @blp.alt_response(429, response="TOO_MANY_REQUESTS")
    def post(self, site_id: int) -> Any:
        """Issue or renew now; an ACME certificate is obtained in the background and
        deployed to every node of the pool."""
        actor = current_actor()
        certificates.request_certificate(actor, site_id)
        return certificates.certificate_to_dict(
            certificates.get_site_certificate(actor, site_id))

    @limit_deploy_requests
    @blp.arguments(UploadSchema)
    @blp.response(200, CertificateSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(429, response="TOO_MANY_REQUESTS")
    def put(self, data: dict[str, Any], site_id: int) -> Any:
        """Upload a chain and key (the site switches to ``custom``) and deploy them."""
        site = certificates.upload_certificate(current_actor(), site_id, data["chain_pem"],
                                               data["key_pem"])
        return certificates.certificate_to_dict(site)


@blp.route("/settings/acme")
class AcmeSettings(MethodView):
    @admin_only
    @blp.response(200, AcmeSettingsSchema)
    def get(self) -> Any:
        """The ACME CA in force (an administrator's choice, else the environment's)."""
        return settings.get_acme_settings(current_actor())

    @admin_only
    @blp.arguments(AcmeSettingsSchema)
    @blp.response(200, AcmeSettingsSchema)
    def put(self, data: dict[str, Any]) -> Any:
        """Change the ACME CA; an empty value goes back to the environment's."""
        return settings.update_acme_settings(current_actor(), data)
