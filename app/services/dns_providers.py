"""DNS providers: the zones whose DNS-01 records the control plane may write.

Administrators register one provider per zone (the server and TSIG key that accept
signed updates for it); issuance picks the provider of a domain with
:func:`provider_for_domain`.  TSIG secrets are write-only: encrypted at rest, never
returned, never logged or audited.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, or_, select

from app.acme.dns import DnsChallengeError, DnsChallengeProvider
from app.acme.dns_rfc2136 import TSIG_ALGORITHMS, Rfc2136Provider
from app.errors import Conflict, ValidationError
from app.extensions import db
from app.models import AcmeChallenge, Certificate, DnsProvider, Site, User
from app.security import (
    validate_base64_secret,
    validate_domain,
    validate_host,
    validate_object_name,
    validate_port,
    validate_tsig_key_name,
)
from app.services import audit
from app.services.common import Page, get_or_404, paginate, require_admin

FIELDS = ("name", "kind", "zone", "server", "port", "tsig_name", "tsig_algorithm",
          "tsig_secret")
KINDS = (Rfc2136Provider.kind,)


def _labels(domain: str) -> list[str]:
    name = domain.strip().lower().rstrip(".").removeprefix("*.")
    return [label for label in name.split(".") if label]


def _in_zone(domain: str, zone: str) -> bool:
    """Label-wise: ``a.example.com`` is in ``example.com``, ``evil-example.com`` is not."""
    zone_labels = zone.split(".")
    return _labels(domain)[-len(zone_labels):] == zone_labels


def provider_for_domain(domain: str) -> DnsChallengeProvider:
    """The provider whose zone is the longest label-wise suffix of ``domain``
    (``a.b.example.com`` picks zone ``b.example.com`` over ``example.com``;
    ``evil-example.com`` never matches ``example.com``).

    ``domain`` may be a wildcard or the ``_acme-challenge`` name itself.

    :raises DnsChallengeError: no registered zone contains the domain.
    """
    labels = _labels(domain)
    suffixes = [".".join(labels[i:]) for i in range(len(labels))]
    rows = db.session.scalars(select(DnsProvider).where(DnsProvider.zone.in_(suffixes))).all()
    if not rows:
        raise DnsChallengeError(f"no DNS provider serves {'.'.join(labels)}: an "
                                "administrator must add one for its zone")
    best = max(rows, key=lambda row: len(row.zone.split(".")))
    return _build(best)


def _build(row: DnsProvider) -> DnsChallengeProvider:
    if row.kind != Rfc2136Provider.kind:
        raise DnsChallengeError(f"the DNS provider {row.name} has an unknown kind {row.kind!r}")
    if not row.tsig_secret or not row.tsig_name:
        raise DnsChallengeError(
            f"the DNS provider {row.name} has no TSIG key: an administrator must set one")
    return Rfc2136Provider(zone=row.zone, server=row.server, port=row.port,
                           tsig_name=row.tsig_name, tsig_algorithm=row.tsig_algorithm,
                           tsig_secret=row.tsig_secret)


def _clean(data: dict[str, Any], *, partial: bool) -> dict[str, Any]:
    errors: dict[str, str] = {}
    out: dict[str, Any] = {}
    for key in sorted(set(data) - set(FIELDS)):
        errors[key] = "unknown field"

    def kind_check(v: Any) -> str:
        v = Rfc2136Provider.kind if v in (None, "") else v
        if v not in KINDS:
            raise ValueError(f"must be one of {', '.join(KINDS)}")
        return str(v)

    def algorithm_check(v: Any) -> str:
        v = "hmac-sha256" if v in (None, "") else v
        if v not in TSIG_ALGORITHMS:
            raise ValueError(f"must be one of {', '.join(TSIG_ALGORITHMS)}")
        return str(v)

    def port_check(v: Any) -> int:
        return validate_port(53 if v in (None, "") else v)

    checks: dict[str, Callable[[Any], Any]] = {
        "name": validate_object_name,
        "kind": kind_check,
        "zone": validate_domain,
        "server": validate_host,
        "port": port_check,
        "tsig_name": validate_tsig_key_name,
        "tsig_algorithm": algorithm_check,
    }
    for key, check in checks.items():
        if key not in data and partial:
            continue
        try:
            out[key] = check(data.get(key))
        except ValueError as exc:
            errors[key] = str(exc)
    secret = data.get("tsig_secret")
    if secret not in (None, "") or not partial:
        try:
            out["tsig_secret"] = validate_base64_secret(secret)
        except ValueError as exc:
            errors["tsig_secret"] = str(exc)
    if errors:
        raise ValidationError("invalid DNS provider", errors)
    return out


def _check_unique(clean: dict[str, Any], exclude_id: int | None) -> None:
    errors: dict[str, str] = {}
    for key in ("name", "zone"):
        if key not in clean:
            continue
        stmt = select(DnsProvider.id).where(getattr(DnsProvider, key) == clean[key])
        if exclude_id is not None:
            stmt = stmt.where(DnsProvider.id != exclude_id)
        if db.session.scalar(stmt) is not None:
            errors[key] = "is already used by another DNS provider"
    if errors:
        raise ValidationError("invalid DNS provider", errors)


def _check_no_certificate_left_without(row: DnsProvider, new_zone: str | None) -> None:
    """Refuse to take a zone away from certificates that renew with DNS-01 when no
    other provider would serve their names."""
    zones = set(db.session.scalars(select(DnsProvider.zone).where(DnsProvider.id != row.id)))
    if new_zone:
        zones.add(new_zone)
    stranded: set[str] = set()
    stmt = (select(Site.domain, Certificate.domains).join(Certificate.site)
            .where(Certificate.challenge == AcmeChallenge.DNS01))
    for site_domain, domains in db.session.execute(stmt):
        if any(_in_zone(d, row.zone) and not any(_in_zone(d, z) for z in zones)
               for d in domains or []):
            stranded.add(site_domain)
    if stranded:
        names = sorted(stranded)
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        raise Conflict(
            f"certificates of {', '.join(names[:5])}{more} renew with DNS-01 through zone "
            f"{row.zone}: add another provider for their names or switch them to HTTP-01 first")


def _audit_fields(clean: dict[str, Any]) -> dict[str, Any]:
    """What changed, without the secret's value."""
    details = {k: v for k, v in clean.items() if k != "tsig_secret"}
    if "tsig_secret" in clean:
        details["tsig_secret"] = "changed"
    return details


def create_provider(actor: User, data: dict[str, Any]) -> DnsProvider:
    require_admin(actor)
    clean = _clean(data, partial=False)
    _check_unique(clean, None)
    row = DnsProvider(**clean)
    db.session.add(row)
    db.session.flush()
    audit.record(actor, "dns_provider.create", "dns_provider", row.id, _audit_fields(clean))
    db.session.commit()
    return row


def update_provider(actor: User, provider_id: int, data: dict[str, Any]) -> DnsProvider:
    """Keys left out keep their value; an empty secret keeps the stored one."""
    require_admin(actor)
    row = get_or_404(DnsProvider, provider_id, "DNS provider")
    clean = _clean(data, partial=True)
    _check_unique(clean, row.id)
    if clean.get("zone", row.zone) != row.zone:
        _check_no_certificate_left_without(row, clean["zone"])
    for key, value in clean.items():
        setattr(row, key, value)
    audit.record(actor, "dns_provider.update", "dns_provider", row.id, _audit_fields(clean))
    db.session.commit()
    return row


def delete_provider(actor: User, provider_id: int) -> None:
    require_admin(actor)
    row = get_or_404(DnsProvider, provider_id, "DNS provider")
    _check_no_certificate_left_without(row, None)
    audit.record(actor, "dns_provider.delete", "dns_provider", row.id,
                 {"name": row.name, "zone": row.zone})
    db.session.delete(row)
    db.session.commit()


def get_provider(actor: User, provider_id: int) -> DnsProvider:
    require_admin(actor)
    return get_or_404(DnsProvider, provider_id, "DNS provider")


CHECK_LABEL = "_rpcc-check"


def check_provider(actor: User, provider_id: int) -> tuple[bool, str]:
    """Prove the server, key and update policy work before an issuance depends on
    them: write a random TXT value under the zone, see it served, remove it.

    Returns (ok, what happened); the message never contains the secret.
    """
    require_admin(actor)
    row = get_or_404(DnsProvider, provider_id, "DNS provider")
    name, value = f"{CHECK_LABEL}.{row.zone}", secrets.token_urlsafe(16)
    try:
        provider = _build(row)
        provider.add_txt(name, value)
        provider.remove_txt(name, value)
    except DnsChallengeError as exc:
        ok, detail = False, str(exc)
    else:
        ok, detail = True, f"{row.server} port {row.port} accepted, served and removed a " \
                           f"TXT record at {name}"
    audit.record(actor, "dns_provider.check", "dns_provider", row.id, {"ok": ok})
    db.session.commit()
    return ok, detail


def list_providers(actor: User, *, page: int = 1, per_page: int = 50,
                   q: str | None = None) -> Page[DnsProvider]:
    """:param q: part of the name or the zone."""
    require_admin(actor)
    stmt = select(DnsProvider).order_by(DnsProvider.zone)
    if q:
        like = f"%{q.lower()}%"
        stmt = stmt.where(or_(func.lower(DnsProvider.name).like(like),
                              DnsProvider.zone.like(like)))
    return paginate(stmt, page, per_page)
