"""Keeping each site's certificate valid: issuing or renewing on request, and the
scheduler's pass over every certificate due.

A self-signed certificate is made at once.  An ACME one is one attempt at a time per
certificate, in any process (a claim in the database), run in the background and
recorded; a failed attempt changes nothing on the nodes, keeps the previous
certificate and waits longer before the next try.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import or_, select, update

from app.acme.client import AcmeIssueError
from app.acme.dns import DnsChallengeError
from app.errors import Conflict, ServiceError, ValidationError
from app.executor import background, executor
from app.extensions import db
from app.models import (
    AcmeChallenge,
    Certificate,
    CertificateAttempt,
    CertificateProvider,
    CertificateStatus,
    Site,
    SslMode,
    User,
)
from app.models.base import utcnow
from app.services import audit, deployments, settings
from app.services.certificates.ordering import issue
from app.services.certificates.pem import parse_chain, uncovered
from app.services.certificates.stored import aware, deploy, make_self_signed, row_for, store
from app.services.common import get_scoped

logger = logging.getLogger(__name__)

# An issuance that has not finished after this long is taken to have died with its
# process: another attempt may start.
ISSUE_STALE_AFTER = timedelta(minutes=15)
BACKOFF_FIRST = timedelta(minutes=5)
BACKOFF_MAX = timedelta(hours=24)
RATE_LIMIT_BACKOFF = timedelta(hours=1)

_PROVIDER_FOR_MODE = {
    SslMode.SELF_SIGNED: CertificateProvider.SELF_SIGNED,
    SslMode.LETSENCRYPT: CertificateProvider.ACME,
    SslMode.CUSTOM: CertificateProvider.UPLOADED,
}


def _claim(cert_id: int, now: datetime) -> bool:
    """Mark the certificate as being issued unless another attempt is running (in
    any process): a conditional UPDATE, so two claims never both win."""
    with db.engine.begin() as conn:
        result = conn.execute(
            update(Certificate).where(
                Certificate.id == cert_id,
                or_(Certificate.issuing_since.is_(None),
                    Certificate.issuing_since < now - ISSUE_STALE_AFTER),
            ).values(status=CertificateStatus.PENDING, last_attempt_at=now, issuing_since=now))
    return result.rowcount == 1


def request_certificate(actor: User, site_id: int) -> Certificate:
    """Issue or renew now ("issue / renew now" in the UI, POST in the API).  A
    self-signed certificate is made at once; an ACME one is obtained in the
    background (the answer says ``pending``) and then deployed to every node.

    :raises ValidationError: the site serves no TLS, or uploads its own certificate.
    :raises Conflict: an issuance for this site is already running.
    """
    site: Site = get_scoped(Site, site_id, actor, "site")
    if site.ssl_mode == SslMode.NONE:
        raise ValidationError("the site has TLS off", {
            "ssl_mode": "choose self_signed, letsencrypt or custom before asking for a "
                        "certificate"})
    if site.ssl_mode == SslMode.CUSTOM:
        raise ValidationError("the site uses an uploaded certificate", {
            "chain_pem": "upload a new chain and key to replace it"})
    if site.ssl_mode == SslMode.SELF_SIGNED:
        cert = make_self_signed(site, site.server_names)
        audit.record(actor, "certificate.issue", "site", site.id,
                     {"domain": site.domain, "provider": "self_signed"})
        db.session.commit()
        deploy(actor, site)
        return cert
    cert = row_for(site, CertificateProvider.ACME)
    db.session.flush()
    cert_id = cert.id
    db.session.commit()
    if not _claim(cert_id, utcnow()):
        raise Conflict("a certificate for this site is being issued already; "
                       "its status shows when it is done")
    attempt = _start_attempt(cert_id, "issue" if not cert.chain_pem else "renew", actor)
    audit.record(actor, "certificate.issue", "site", site.id,
                 {"domain": site.domain, "provider": "acme"})
    db.session.commit()
    _launch(cert_id, attempt, actor.id)
    db.session.refresh(cert)
    return cert


def _start_attempt(cert_id: int, kind: str, actor: User | None) -> int:
    attempt = CertificateAttempt(certificate_id=cert_id, kind=kind,
                                 triggered_by_id=actor.id if actor else None)
    db.session.add(attempt)
    db.session.flush()
    return attempt.id


def _launch(cert_id: int, attempt_id: int, actor_id: int | None) -> None:
    """Obtain the certificate in the background (the request answers at once)."""
    executor.submit("certificate", cert_id, _obtain, cert_id, attempt_id, actor_id)


def wait(cert_id: int, timeout: float = 120.0) -> Certificate:
    """Block until a background issuance of this certificate ends (CLI and tests)."""
    executor.join("certificate", cert_id, timeout)
    db.session.expire_all()
    cert = db.session.get(Certificate, cert_id)
    assert cert is not None
    return cert


def _backoff(failures: int, code: str) -> timedelta:
    delay = min(BACKOFF_MAX, BACKOFF_FIRST * (3 ** max(0, failures - 1)))
    return max(delay, RATE_LIMIT_BACKOFF) if code == "rate_limited" else delay


def _serve_site_first(actor_id: int | None, site_id: int) -> None:
    """HTTP-01: the CA asks for the token under the site's own names, so the nodes
    must serve the site before it asks.  A rollout of the site still running is
    waited for; a site no node serves yet is deployed first (the certificate's own
    rollout follows once it is issued)."""
    in_flight = deployments.site_rollout_in_flight(site_id)
    if in_flight is not None:
        deployments.wait(in_flight)
    site = db.session.get(Site, site_id)
    if site is None or site.deployed_nodes or not deployments.active_nodes(site.pool_id):
        return
    actor = db.session.get(User, actor_id) if actor_id else None
    try:
        rollout = deployments.deploy_site(actor, site_id)
    except ServiceError as exc:  # the CA's answer will say what is missing
        logger.info("site %s: not deployed before its HTTP-01 challenge: %s", site_id, exc)
        db.session.rollback()
        return
    deployments.wait(rollout.id)


@background("certificate")
def _obtain(cert_id: int, attempt_id: int, actor_id: int | None) -> bool:
    """Run one ACME issuance, store the outcome, deploy on success.  Returns whether
    a certificate was obtained."""
    cert = db.session.get(Certificate, cert_id)
    assert cert is not None
    site = cert.site
    site_id, names = site.id, site.server_names
    challenge = site.acme_challenge
    error_code, error = "", ""
    try:
        if challenge == AcmeChallenge.HTTP01.value:
            _serve_site_first(actor_id, site_id)
        acme = settings.acme_settings()
        db.session.commit()  # no connection held while the CA works
        issued = issue(site_id, acme, challenge=challenge)
        parsed = parse_chain(issued.chain_pem, issued.key_pem)
    except AcmeIssueError as exc:
        error_code, error = exc.code, str(exc)
    except DnsChallengeError as exc:
        error_code, error = "dns_provider", str(exc)
    except ValidationError as exc:
        error_code = "ca_refused"
        error = "the CA returned an unusable certificate: " + "; ".join(exc.fields.values())
    except Exception as exc:  # a bug or an unexpected answer must still be recorded
        logger.exception("certificate %s: issuance failed", cert_id)
        error_code, error = "internal", f"issuance failed: {type(exc).__name__}: {exc}"
    now = utcnow()
    cert = db.session.get(Certificate, cert_id)
    attempt = db.session.get(CertificateAttempt, attempt_id)
    if cert is None or attempt is None:  # the site was deleted meanwhile
        return False
    attempt.finished_at = now
    attempt.ok = not error
    cert.issuing_since = None
    attempt.error = error[:4000]
    if error:
        cert.status = CertificateStatus.FAILED
        cert.last_error = error[:4000]
        cert.last_error_code = error_code
        cert.failures += 1
        cert.next_attempt_at = now + _backoff(cert.failures, error_code)
        db.session.commit()
        logger.info("certificate %s: attempt failed (%s)", cert_id, error_code)
        return False
    store(cert, CertificateProvider.ACME, parsed, names)
    cert.challenge = AcmeChallenge(challenge)
    cert.acme_directory = acme.directory_url[:500]
    actor = db.session.get(User, actor_id) if actor_id else None
    audit.record(actor, "certificate.issued", "site", site_id,
                 {"serial": parsed.serial, "not_after": parsed.not_after.isoformat()})
    db.session.commit()
    # Still "pending" while the certificate goes out: "valid" means the fleet has it.
    rollout_id = deploy(actor, cert.site)
    if rollout_id is not None:
        deployments.wait(rollout_id)
    cert = db.session.get(Certificate, cert_id)
    if cert is not None:
        cert.status = CertificateStatus.VALID
        db.session.commit()
    return True


def renew_due(now: datetime | None = None) -> str:
    """The scheduler's job: obtain what is missing, renew what expires within
    ``CERT_RENEW_BEFORE_DAYS`` or no longer covers the site's names, and retry failed
    attempts once their backoff has passed.  One site at a time; returns a summary."""
    now = aware(now) or utcnow()
    soon = now + timedelta(days=current_app.config["CERT_RENEW_BEFORE_DAYS"])
    stmt = (select(Site).outerjoin(Certificate, Certificate.site_id == Site.id)
            .where(Site.ssl_mode.in_([SslMode.SELF_SIGNED, SslMode.LETSENCRYPT]),
                   or_(Certificate.id.is_(None), Certificate.next_attempt_at.is_(None),
                       Certificate.next_attempt_at <= now))
            .order_by(Site.id))
    done, failed = 0, 0
    for site_id in [s.id for s in db.session.scalars(stmt)]:
        site = db.session.get(Site, site_id)
        if site is None:
            continue
        cert = site.certificate
        wanted = _PROVIDER_FOR_MODE[site.ssl_mode]
        not_after = aware(cert.not_after) if cert is not None else None
        due = (cert is None or not cert.chain_pem or cert.provider != wanted
               or not_after is None or not_after <= soon
               or bool(uncovered(site.server_names, cert.domains))
               or cert.status == CertificateStatus.FAILED)
        if not due:
            continue
        if site.ssl_mode == SslMode.SELF_SIGNED:
            make_self_signed(site, site.server_names)
            audit.record(None, "certificate.renew", "site", site.id, {"provider": "self_signed"})
            db.session.commit()
            deploy(None, site)
            done += 1
            continue
        cert = row_for(site, CertificateProvider.ACME)
        db.session.flush()
        cert_id = cert.id
        db.session.commit()
        if not _claim(cert_id, now):
            continue
        attempt = _start_attempt(cert_id, "renew" if cert.chain_pem else "issue", None)
        db.session.commit()
        if _obtain(cert_id, attempt, None):
            done += 1
        else:
            failed += 1
    return f"{done} certificate(s) obtained, {failed} failed"
