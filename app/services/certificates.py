"""Certificates: what each site serves over TLS, where it came from (self-signed,
uploaded, or an ACME CA), and keeping it valid.

A certificate change is deployed with the site's configuration (the same atomic
deployment), so a node never holds a certificate its config does not name.  A failed
issuance or renewal changes nothing on the nodes: the previous certificate stays in
the database and on the nodes until a new one is obtained.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from flask import Flask, current_app
from sqlalchemy import or_, select, update

from app.acme.dns import DnsChallengeError
from app.acme.issue import AcmeIssueError, issue
from app.errors import Conflict, ServiceError, ValidationError
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
from app.services.common import get_scoped

logger = logging.getLogger(__name__)

# An issuance that has not finished after this long is taken to have died with its
# process: another attempt may start.
ISSUE_STALE_AFTER = timedelta(minutes=15)
BACKOFF_FIRST = timedelta(minutes=5)
BACKOFF_MAX = timedelta(hours=24)
RATE_LIMIT_BACKOFF = timedelta(hours=1)
MAX_PEM_BYTES = 64 * 1024
MAX_CHAIN_LENGTH = 10

_PROVIDER_FOR_MODE = {
    SslMode.SELF_SIGNED: CertificateProvider.SELF_SIGNED,
    SslMode.LETSENCRYPT: CertificateProvider.ACME,
    SslMode.CUSTOM: CertificateProvider.UPLOADED,
}
_THREADS: dict[int, threading.Thread] = {}


# --------------------------------------------------------------------------- #
# Reading certificates                                                        #
# --------------------------------------------------------------------------- #

@dataclass(frozen=True)
class ParsedChain:
    chain_pem: str
    key_pem: str
    names: list[str]
    not_before: datetime
    not_after: datetime
    issuer: str
    serial: str
    fingerprint: str


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back without their offset; they are UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _name_matches(pattern: str, name: str) -> bool:
    """RFC 6125: a wildcard stands for exactly one left-most label; a wildcard name
    of the site is covered only by the same wildcard."""
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern == name:
        return True
    if pattern.startswith("*.") and not name.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return False


def uncovered(names: list[str], cert_names: list[str]) -> list[str]:
    return [n for n in names if not any(_name_matches(p, n) for p in cert_names)]


def _san_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [n.lower() for n in san.value.get_values_for_type(x509.DNSName)]


def _public_bytes(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_key_type(key: Any) -> None:
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ValueError(f"the RSA key has {key.key_size} bits; at least 2048 are needed")
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise ValueError("EC keys must use P-256 or P-384")
    elif not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError("the key must be RSA (2048 bits or more) or EC P-256/P-384")


def parse_chain(chain_pem: str, key_pem: str, *, now: datetime | None = None) -> ParsedChain:
    """Check a chain and its key and return them re-encoded (only certificates and
    the key reach the node's files, never surrounding text).

    :raises ValidationError: with ``chain_pem`` or ``key_pem`` saying what is wrong.
    """
    now = now or utcnow()
    for field, value in (("chain_pem", chain_pem), ("key_pem", key_pem)):
        if not isinstance(value, str) or not value.strip():
            raise ValidationError("invalid certificate", {field: "is required"})
        if len(value.encode()) > MAX_PEM_BYTES:
            raise ValidationError("invalid certificate", {field: "must be at most 64 KiB"})
    try:
        certs = x509.load_pem_x509_certificates(chain_pem.encode())
    except ValueError:
        raise ValidationError("invalid certificate", {
            "chain_pem": "is not a PEM certificate chain (-----BEGIN CERTIFICATE----- blocks)"
        }) from None
    if len(certs) > MAX_CHAIN_LENGTH:
        raise ValidationError("invalid certificate", {
            "chain_pem": f"holds {len(certs)} certificates; at most {MAX_CHAIN_LENGTH}"})
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except TypeError:
        raise ValidationError("invalid certificate", {
            "key_pem": "is protected by a password: upload the key without one"}) from None
    except (ValueError, Exception):
        raise ValidationError("invalid certificate", {
            "key_pem": "is not a PEM private key (-----BEGIN PRIVATE KEY-----)"}) from None
    try:
        _check_key_type(key)
    except ValueError as exc:
        raise ValidationError("invalid certificate", {"key_pem": str(exc)}) from None
    for child, parent in zip(certs, certs[1:], strict=False):
        if child.issuer != parent.subject:
            raise ValidationError("invalid certificate", {
                "chain_pem": "the chain is out of order: each certificate must be followed "
                             "by the one that issued it (leaf first)"})
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, Exception):
            raise ValidationError("invalid certificate", {
                "chain_pem": f"{child.subject.rfc4514_string()} is not signed by the next "
                             f"certificate of the chain"}) from None
    leaf = certs[0]
    if _public_bytes(key.public_key()) != _public_bytes(leaf.public_key()):
        raise ValidationError("invalid certificate", {
            "key_pem": "does not belong to the first certificate of the chain (the key "
                       "and the certificate do not match)"})
    for cert in certs:
        who = cert.subject.rfc4514_string() or "the certificate"
        if cert.not_valid_after_utc <= now:
            raise ValidationError("invalid certificate", {
                "chain_pem": f"{who} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"})
        if cert.not_valid_before_utc > now + timedelta(days=1):
            raise ValidationError("invalid certificate", {
                "chain_pem": f"{who} is not valid before "
                             f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"})
    names = _san_names(leaf)
    chain_out = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)
    key_out = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return ParsedChain(
        chain_pem=chain_out, key_pem=key_out, names=names,
        not_before=leaf.not_valid_before_utc, not_after=leaf.not_valid_after_utc,
        issuer=leaf.issuer.rfc4514_string()[:500], serial=format(leaf.serial_number, "x")[:64],
        fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
    )


def self_signed(names: list[str], days: int) -> tuple[str, str]:
    """A P-256 certificate for every name (chain PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])])
    now = utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode())


# --------------------------------------------------------------------------- #
# Storing                                                                     #
# --------------------------------------------------------------------------- #

def _row(site: Site, provider: CertificateProvider) -> Certificate:
    cert = site.certificate
    if cert is None:
        cert = Certificate(site=site, provider=provider, domains=[], chain_pem="",
                           status=CertificateStatus.PENDING, failures=0, last_error="",
                           last_error_code="")
        db.session.add(cert)
    return cert


def _store(cert: Certificate, provider: CertificateProvider, parsed: ParsedChain,
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
    _make_self_signed(site, names)


def _make_self_signed(site: Site, names: list[str]) -> Certificate:
    chain, key = self_signed(names, current_app.config["CERT_SELF_SIGNED_DAYS"])
    cert = _row(site, CertificateProvider.SELF_SIGNED)
    _store(cert, CertificateProvider.SELF_SIGNED, parse_chain(chain, key), list(names))
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
    cert = _row(site, CertificateProvider.UPLOADED)
    _store(cert, CertificateProvider.UPLOADED, parsed, parsed.names)
    cert.challenge = None
    cert.status = CertificateStatus.VALID
    cert.last_attempt_at = utcnow()
    site.ssl_mode = SslMode.CUSTOM
    audit.record(actor, "certificate.upload", "site", site.id,
                 {"domain": site.domain, "serial": parsed.serial,
                  "not_after": parsed.not_after.isoformat()})
    db.session.commit()
    _deploy(actor, site)
    return site


def _deploy(actor: User | None, site: Site) -> int | None:
    """Send the site's new certificate to its pool (nothing to do without nodes:
    the next node to join gets it with its first deployment).  Returns the rollout."""
    if not deployments.active_nodes(site.pool_id):
        return None
    return deployments.deploy_site(actor, site.id).id


# --------------------------------------------------------------------------- #
# Issuing and renewing                                                        #
# --------------------------------------------------------------------------- #

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
        cert = _make_self_signed(site, site.server_names)
        audit.record(actor, "certificate.issue", "site", site.id,
                     {"domain": site.domain, "provider": "self_signed"})
        db.session.commit()
        _deploy(actor, site)
        return cert
    cert = _row(site, CertificateProvider.ACME)
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
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    thread = threading.Thread(target=_run_in_background, args=(app, cert_id, attempt_id,
                                                               actor_id),
                              name=f"certificate-{cert_id}", daemon=True)
    _THREADS[cert_id] = thread
    thread.start()


def _run_in_background(app: Flask, cert_id: int, attempt_id: int,
                       actor_id: int | None) -> None:
    with app.app_context():
        try:
            _obtain(cert_id, attempt_id, actor_id)
        except Exception:
            logger.exception("certificate %s: issuance failed unexpectedly", cert_id)
        finally:
            db.session.remove()
            _THREADS.pop(cert_id, None)


def wait(cert_id: int, timeout: float = 120.0) -> Certificate:
    """Block until a background issuance of this certificate ends (CLI and tests)."""
    thread = _THREADS.get(cert_id)
    if thread is not None:
        thread.join(timeout)
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
    _store(cert, CertificateProvider.ACME, parsed, names)
    cert.challenge = AcmeChallenge(challenge)
    cert.acme_directory = acme.directory_url[:500]
    actor = db.session.get(User, actor_id) if actor_id else None
    audit.record(actor, "certificate.issued", "site", site_id,
                 {"serial": parsed.serial, "not_after": parsed.not_after.isoformat()})
    db.session.commit()
    # Still "pending" while the certificate goes out: "valid" means the fleet has it.
    rollout_id = _deploy(actor, cert.site)
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
            _make_self_signed(site, site.server_names)
            audit.record(None, "certificate.renew", "site", site.id, {"provider": "self_signed"})
            db.session.commit()
            _deploy(None, site)
            done += 1
            continue
        cert = _row(site, CertificateProvider.ACME)
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
    what is served and until when, and the last error in words a client can act on."""
    cert = site.certificate
    if cert is None:
        return {"site_id": site.id, "ssl_mode": site.ssl_mode.value, "status": "none",
                "provider": None, "challenge": None, "domains": [], "serving": False,
                "not_before": None, "not_after": None, "renew_after": None,
                "issuer": "", "serial": "", "fingerprint_sha256": "",
                "last_attempt_at": None, "next_attempt_at": None,
                "last_error": "", "last_error_code": ""}

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
    }

