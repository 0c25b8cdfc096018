"""What each site serves over TLS: the certificate row, how a new chain replaces the
old one, and what the API and the pages show of it.

Storing a chain bumps the site's configuration version, so the certificate travels
with the site's next deployment and a node never holds a certificate its config does
not name.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import current_app

from app.errors import ValidationError
from app.extensions import db
from app.models import (
    Certificate,
    CertificateProvider,
    CertificateStatus,
    Site,
    SslMode,
    User,
)
from app.models.base import utcnow
from app.services import audit, deployments
from app.services.certificates.ordering import precheck_plan
from app.services.certificates.pem import ParsedChain, parse_chain, self_signed, uncovered
from app.services.common import get_scoped


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back without their offset; they are UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def row_for(site: Site, provider: CertificateProvider) -> Certificate:
    cert = site.certificate
    if cert is None:
        cert = Certificate(site=site, provider=provider, domains=[], chain_pem="",
                           status=CertificateStatus.PENDING, failures=0, last_error="",
                           last_error_code="")
        db.session.add(cert)
    return cert


def store(cert: Certificate, provider: CertificateProvider, parsed: ParsedChain,
          domains: list[str]) -> None:
    cert.provider = provider
    cert.chain_pem = parsed.chain_pem
    cert.key_pem = parsed.key_pem
    cert.domains = domains
    cert.not_before = parsed.not_before
    cert.not_after = parsed.not_after
    cert.issuer = parsed.issuer
    cert.serial = parsed.serial
    cert.fingerprint_sha256 = parsed.fingerprint
    cert.last_error = ""
    cert.last_error_code = ""
    cert.failures = 0
    cert.next_attempt_at = None
    cert.site.config_version += 1


def sync_site(site: Site) -> None:
    """Called when a site is saved: a self-signed site gets (or, when its names
    changed, renews) its certificate at once, so its next deployment serves TLS."""
    if site.ssl_mode != SslMode.SELF_SIGNED:
        return
    cert = site.certificate
    names = site.server_names
    if (cert is not None and cert.provider == CertificateProvider.SELF_SIGNED
            and cert.chain_pem and not uncovered(names, cert.domains)):
        return
    make_self_signed(site, names)


def make_self_signed(site: Site, names: list[str]) -> Certificate:
    chain, key = self_signed(names, current_app.config["CERT_SELF_SIGNED_DAYS"])
    cert = row_for(site, CertificateProvider.SELF_SIGNED)
    store(cert, CertificateProvider.SELF_SIGNED, parse_chain(chain, key), list(names))
    cert.challenge = None
    cert.status = CertificateStatus.VALID
    cert.last_attempt_at = utcnow()
    return cert


def upload_certificate(actor: User, site_id: int, chain_pem: Any, key_pem: Any) -> Site:
    """Serve an uploaded chain and key (the site switches to ``custom``) and deploy it.

    :raises ValidationError: the key does not match, the chain is expired, out of
        order, or does not cover every name of the site.
    """
    site: Site = get_scoped(Site, site_id, actor, "site")
    parsed = parse_chain(chain_pem, key_pem)
    missing = uncovered(site.server_names, parsed.names)
    if missing:
        raise ValidationError("invalid certificate", {
            "chain_pem": "the certificate does not cover " + ", ".join(missing)
                         + (f" (it covers {', '.join(parsed.names)})" if parsed.names
                            else " (it names no DNS names)")})
    cert = row_for(site, CertificateProvider.UPLOADED)
    store(cert, CertificateProvider.UPLOADED, parsed, parsed.names)
    cert.challenge = None
    cert.status = CertificateStatus.VALID
    cert.last_attempt_at = utcnow()
    site.ssl_mode = SslMode.CUSTOM
    audit.record(actor, "certificate.upload", "site", site.id,
                 {"domain": site.domain, "serial": parsed.serial,
                  "not_after": parsed.not_after.isoformat()})
    db.session.commit()
    deploy(actor, site)
    return site


def deploy(actor: User | None, site: Site) -> int | None:
    """Send the site's new certificate to its pool (nothing to do without nodes:
    the next node to join gets it with its first deployment).  Returns the rollout."""
    if not deployments.active_nodes(site.pool_id):
        return None
    return deployments.deploy_site(actor, site.id).id


# --------------------------------------------------------------------------- #
# Showing                                                                     #
# --------------------------------------------------------------------------- #

def get_site_certificate(actor: User, site_id: int) -> Site:
    """The site (scoped to the actor); its ``certificate`` may be None."""
    return get_scoped(Site, site_id, actor, "site")


def renewal_due_at(cert: Certificate) -> datetime | None:
    not_after = aware(cert.not_after)
    if not_after is None:
        return None
    return not_after - timedelta(days=current_app.config["CERT_RENEW_BEFORE_DAYS"])


def certificate_to_dict(site: Site) -> dict[str, Any]:
    """The API's view: status of the latest attempt (``none`` before the first),
    what is served and until when, the last error in words a client can act on, and
    whether orders are pre-checked against DNS."""
    cert = site.certificate
    if cert is None:
        return {"site_id": site.id, "ssl_mode": site.ssl_mode.value, "status": "none",
                "provider": None, "challenge": None, "domains": [], "serving": False,
                "not_before": None, "not_after": None, "renew_after": None,
                "issuer": "", "serial": "", "fingerprint_sha256": "",
                "last_attempt_at": None, "next_attempt_at": None,
                "last_error": "", "last_error_code": "", "precheck": precheck_plan(site)}

    def iso(value: datetime | None) -> str | None:
        value = aware(value)
        return value.isoformat() if value else None

    renew = renewal_due_at(cert)
    return {
        "site_id": site.id,
        "ssl_mode": site.ssl_mode.value,
        "status": cert.status.value,
        "provider": cert.provider.value,
        "challenge": cert.challenge.value if cert.challenge else None,
        "domains": list(cert.domains),
        "serving": bool(cert.chain_pem) and site.ssl_mode != SslMode.NONE,
        "not_before": iso(cert.not_before),
        "not_after": iso(cert.not_after),
        "renew_after": iso(renew) if cert.provider != CertificateProvider.UPLOADED else None,
        "issuer": cert.issuer,
        "serial": cert.serial,
        "fingerprint_sha256": cert.fingerprint_sha256,
        "last_attempt_at": iso(cert.last_attempt_at),
        "next_attempt_at": iso(cert.next_attempt_at),
        "last_error": cert.last_error,
        "last_error_code": cert.last_error_code,
        "precheck": precheck_plan(site),
    }
