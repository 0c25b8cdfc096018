"""Settings an administrator may change at run time (stored in the database), over
the environment's values.  Today: the ACME certificate authority, whether
administrators must sign in with a second factor, and where backends may point."""

from __future__ import annotations

import hashlib
import os
from ipaddress import ip_network
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from flask import current_app

from app.acme.client import AcmeSettings
from app.errors import ValidationError
from app.extensions import db
from app.models import Setting, User
from app.security import METADATA_ADDRESSES, Network, normalize_email, parse_networks
from app.services import audit, backends
from app.services.common import require_admin

ACME_KEYS = ("acme_directory_url", "acme_email", "acme_ca_bundle_pem")
_MAX_BUNDLE = 256 * 1024


def _stored() -> dict[str, str]:
    return {row.key: row.value for row in db.session.scalars(
        db.select(Setting).where(Setting.key.in_(ACME_KEYS)))}


def acme_settings() -> AcmeSettings:
    """The CA every issuance and renewal uses now.  A CA bundle pasted by an admin is
    written once to the instance folder, where the HTTP client can read it."""
    cfg = current_app.config
    stored = _stored()
    bundle: str | None = cfg.get("ACME_CA_BUNDLE") or None
    if stored.get("acme_ca_bundle_pem"):
        pem = stored["acme_ca_bundle_pem"]
        path = Path(current_app.instance_path) / (
            "acme-ca-" + hashlib.sha256(pem.encode()).hexdigest()[:16] + ".pem")
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(pem)
            tmp.replace(path)
        bundle = str(path)
    return AcmeSettings(
        directory_url=stored.get("acme_directory_url") or cfg["ACME_DIRECTORY_URL"],
        email=stored.get("acme_email") or cfg.get("ACME_EMAIL", ""),
        ca_bundle=bundle,
    )


def get_acme_settings(actor: User) -> dict[str, Any]:
    """What the settings page and API show: the value in force and where it comes from."""
    require_admin(actor)
    cfg = current_app.config
    stored = _stored()
    return {
        "directory_url": stored.get("acme_directory_url") or cfg["ACME_DIRECTORY_URL"],
        "email": stored.get("acme_email") or cfg.get("ACME_EMAIL", ""),
        "ca_bundle_pem": stored.get("acme_ca_bundle_pem", ""),
        "ca_bundle_path": cfg.get("ACME_CA_BUNDLE") or "",
        "overridden": sorted(k for k in ACME_KEYS if stored.get(k)),
    }


def _check_url(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 500:
        raise ValueError("must be an https:// URL of at most 500 characters")
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname or any(c.isspace() for c in value):
        raise ValueError("must be an https:// URL (ACME directories are served over TLS)")
    return value


def _check_email(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be text")
    if not value:
        return ""
    return normalize_email(value)


def _check_bundle(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be PEM text")
    value = value.strip()
    if not value:
        return ""
    if len(value) > _MAX_BUNDLE:
        raise ValueError("must be at most 256 KiB")
    try:
        certs = x509.load_pem_x509_certificates(value.encode())
    except ValueError:
        raise ValueError("is not a PEM certificate bundle") from None
    from cryptography.hazmat.primitives.serialization import Encoding

    # Stored re-encoded: nothing but certificates reaches the file.
    return "".join(c.public_bytes(Encoding.PEM).decode() for c in certs)


def update_acme_settings(actor: User, data: dict[str, Any]) -> dict[str, Any]:
    """Override (or, with an empty value, go back to the environment's) ACME CA
    directory, account email and CA bundle."""
    require_admin(actor)
    if not isinstance(data, dict):
        raise ValidationError("invalid settings", {"_": "must be an object"})
    checks = {"directory_url": _check_url, "email": _check_email,
              "ca_bundle_pem": _check_bundle}
    errors: dict[str, str] = {}
    clean: dict[str, str] = {}
    for key in sorted(set(data) - set(checks)):
        errors[key] = "unknown field"
    for key, check in checks.items():
        if key not in data or (key == "directory_url" and data[key] in ("", None)):
            if key in data:
                clean[key] = ""
            continue
        try:
            clean[key] = check(data[key])
        except ValueError as exc:
            errors[key] = str(exc)
    if errors:
        raise ValidationError("invalid settings", errors)
    for key, value in clean.items():
        row = db.session.get(Setting, f"acme_{key}")
        if value:
            if row is None:
                row = Setting(key=f"acme_{key}")
                db.session.add(row)
            row.value = value
            row.updated_by_id = actor.id
        elif row is not None:
            db.session.delete(row)
    audit.record(actor, "settings.acme", "settings", "acme", {"changed": sorted(clean)})
    db.session.commit()
    return get_acme_settings(actor)


# Off until an administrator turns it on: an upgrade must not lock anyone out.
_ADMIN_TWO_FACTOR = "require_admin_two_factor"


def admin_two_factor_required() -> bool:
    """Whether an administrator without two-factor sign-in is held at enrolment."""
    row = db.session.get(Setting, _ADMIN_TWO_FACTOR)
    return row is not None and row.value == "1"


def get_security_settings(actor: User) -> dict[str, Any]:
    require_admin(actor)
    return {"require_admin_two_factor": admin_two_factor_required()}


def update_security_settings(actor: User, data: dict[str, Any]) -> dict[str, Any]:
    """Turn the two-factor requirement for administrators on or off.  Tokens keep
    working either way: the requirement is about signing in with a password."""
    require_admin(actor)
    if not isinstance(data, dict):
        raise ValidationError("invalid settings", {"_": "must be an object"})
    errors = {key: "unknown field" for key in sorted(set(data) - {_ADMIN_TWO_FACTOR})}
    value = data.get(_ADMIN_TWO_FACTOR)
    if _ADMIN_TWO_FACTOR in data and not isinstance(value, bool):
        errors[_ADMIN_TWO_FACTOR] = "must be true or false"
    if errors:
        raise ValidationError("invalid settings", errors)
    if _ADMIN_TWO_FACTOR in data:
        row = db.session.get(Setting, _ADMIN_TWO_FACTOR)
        if value:
            if row is None:
                row = Setting(key=_ADMIN_TWO_FACTOR)
                db.session.add(row)
            row.value = "1"
            row.updated_by_id = actor.id
        elif row is not None:
            db.session.delete(row)
        audit.record(actor, "settings.security", "settings", "security",
                     {_ADMIN_TWO_FACTOR: value})
        db.session.commit()
    return get_security_settings(actor)


# -- backend address policy ---------------------------------------------------------

POLICY_FIELDS = {"denied_networks": backends.DENIED_SETTING,
                 "allowed_networks": backends.ALLOWED_SETTING}
_MAX_NETWORKS = 256
# Why each network that is always denied is (shown with the policy in force).
_ALWAYS_DENIED = {"169.254.0.0/16": "link-local", "fe80::/10": "link-local",
                  "127.0.0.0/8": "loopback", "::1/128": "loopback",
                  "0.0.0.0/8": "this host", "::/128": "this host"}


def _networks(value: str) -> list[str]:
    return [str(network) for network in parse_networks(value)]


def get_backend_policy(actor: User) -> dict[str, Any]:
    """The networks an administrator denied and allowed (else the environment's),
    and the policy a site's backends meet when it is saved, entry by entry."""
    require_admin(actor)
    cfg = current_app.config
    denied, allowed = backends.configured_networks()
    stored = set(db.session.scalars(db.select(Setting.key).where(
        Setting.key.in_(POLICY_FIELDS.values()))))
    allowed_networks = parse_networks(allowed)
    rows = [(network, reason) for network, reason in _ALWAYS_DENIED.items()]
    rows += [(str(address), "cloud metadata") for address in sorted(
        METADATA_ADDRESSES, key=lambda a: (a.version, a))]
    rows += [(network, "denied here" if POLICY_FIELDS["denied_networks"] in stored
              else "BACKEND_DENIED_NETWORKS") for network in _networks(denied)]
    rows += [(str(network), "a node's address") for network in backends.node_networks()]
    return {
        "denied_networks": _networks(denied),
        "allowed_networks": [str(n) for n in allowed_networks],
        "overridden": sorted(k for k, key in POLICY_FIELDS.items() if key in stored),
        "environment": {
            "denied_networks": _networks(cfg.get("BACKEND_DENIED_NETWORKS") or ""),
            "allowed_networks": _networks(cfg.get("BACKEND_ALLOWED_NETWORKS") or "")},
        "effective": [_effective(network, reason, allowed_networks)
                      for network, reason in rows],
    }


def _effective(network: str, reason: str, allowed: tuple[Network, ...]) -> dict[str, Any]:
    """Whether the allowed networks open ``network``: a metadata address only to an
    entry naming that address alone (as ``backend_refusal`` decides)."""
    denied = ip_network(network, strict=False)
    if reason == "cloud metadata":
        opening = [a for a in allowed if a.num_addresses == 1 and a == denied]
        covering = opening
    else:
        opening = [a for a in allowed if a.version == denied.version and a.overlaps(denied)]
        covering = [a for a in opening if denied.subnet_of(a)]  # type: ignore[arg-type]
    state = "allowed" if covering else "partly_allowed" if opening else "denied"
    return {"network": network, "reason": reason, "state": state,
            "allowed_by": [str(a) for a in opening]}


def _check_networks(value: Any) -> str:
    """A list of CIDRs, strictly: a network with host bits set is a typing mistake
    that silently denying or allowing its whole network would hide."""
    if not isinstance(value, list) or len(value) > _MAX_NETWORKS:
        raise ValueError(f"must be a list of at most {_MAX_NETWORKS} networks such as "
                         "10.0.0.0/8 (null for the environment's)")
    clean: list[str] = []
    for entry in value:
        text = entry.strip() if isinstance(entry, str) else ""
        try:
            network = str(ip_network(text, strict=True))
        except ValueError:
            if isinstance(entry, str) and "/" in text:
                try:
                    fixed = ip_network(text, strict=False)
                except ValueError:
                    pass
                else:
                    raise ValueError(f"'{text[:60]}' has host bits set: did you mean "
                                     f"{fixed}?") from None
            raise ValueError(f"'{str(entry)[:60]}' is not an IP network such as "
                             "10.0.0.0/8 or 2001:db8::/32") from None
        if network not in clean:
            clean.append(network)
    return ",".join(clean)


def update_backend_policy(actor: User, data: dict[str, Any]) -> dict[str, Any]:
    """Set the networks backends may not use, or the exceptions (a list of CIDRs,
    ``null`` for the environment's value).  Applies to sites saved from now on."""
    require_admin(actor)
    if not isinstance(data, dict):
        raise ValidationError("invalid settings", {"_": "must be an object"})
    errors = {key: "unknown field" for key in sorted(set(data) - set(POLICY_FIELDS))}
    clean: dict[str, str | None] = {}
    for name in POLICY_FIELDS:
        if name not in data:
            continue
        try:
            clean[name] = None if data[name] is None else _check_networks(data[name])
        except ValueError as exc:
            errors[name] = str(exc)
    if errors:
        raise ValidationError("invalid settings", errors)
    before = get_backend_policy(actor)
    for name, value in clean.items():
        row = db.session.get(Setting, POLICY_FIELDS[name])
        if value is None:
            if row is not None:
                db.session.delete(row)
            continue
        if row is None:
            row = Setting(key=POLICY_FIELDS[name])
            db.session.add(row)
        row.value = value
        row.updated_by_id = actor.id
    db.session.flush()
    after = get_backend_policy(actor)
    changes = {name: {"old": before[name], "new": after[name],
                      "from_environment": name not in after["overridden"]}
               for name in clean if (before[name], name in before["overridden"])
               != (after[name], name in after["overridden"])}
    if changes:
        audit.record(actor, "settings.backend_policy", "settings", "backend_policy", changes)
    db.session.commit()
    return after
