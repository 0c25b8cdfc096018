"""Sites: a client's domain in front of backends, with every proxy setting.

Input is a plain dict with the API's field names (the UI's forms build the same
dict), so that the web UI and the API enforce exactly the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from publicsuffixlist import PublicSuffixList
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import selectinload

from app.errors import Conflict, NotFound, ValidationError
from app.extensions import db
from app.models import (
    BackendProtocol,
    BlockedName,
    GeoMode,
    Node,
    NodeStatus,
    Pool,
    Rollout,
    Site,
    SiteBackend,
    SiteBasicAuthUser,
    SiteHostname,
    SslMode,
    User,
    WafLevel,
)
from app.models.base import as_utc
from app.security import (
    hash_basic_auth_password,
    validate_basic_auth_username,
    validate_cidr,
    validate_country,
    validate_domain,
    validate_header_name,
    validate_header_value,
    validate_host,
    validate_int,
    validate_port,
    validate_safe_text,
    validate_secret_text,
)
from app.services import audit, certificates, rendering
from app.services import backends as backends_service
from app.services.common import (
    Page,
    get_or_404,
    get_scoped,
    paginate,
    require_admin,
    scoped,
)
from app.services.names import held_by_others

SITE_FIELDS = (
    "domain", "aliases", "backends", "backend_protocol", "pool", "ssl_mode", "acme_challenge",
    "force_https",
    "hsts", "http2", "websocket", "waf_level", "cache", "geo", "ip_allow", "ip_deny",
    "basic_auth", "rate_limit", "headers", "blocked", "blocked_reason",
)
ADMIN_FIELDS = ("owner_id",)
# How a "letsencrypt" site proves its names to the CA (see services/certificates/).
ACME_CHALLENGES = ("http-01", "dns-01")
LIMITS = {
    "aliases": 50, "backends": 32, "countries": 250, "ip_rules": 500, "basic_auth": 50,
    "headers": 30,
}
_LOAD_OPTIONS = (
    selectinload(Site.hostnames),
    selectinload(Site.backends),
    selectinload(Site.basic_auth_users),
    selectinload(Site.pool),
    selectinload(Site.owner),
)


class _Errors(dict[str, str]):
    def check(self, key: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ValueError as exc:
            self.setdefault(key, str(exc))
            return None


def _bool(errors: _Errors, key: str, value: Any) -> bool | None:
    if not isinstance(value, bool):
        errors[key] = "must be true or false"
        return None
    return value


def _enum(errors: _Errors, key: str, enum_cls: Any, value: Any) -> Any:
    try:
        return enum_cls(value)
    except ValueError:
        choices = ", ".join(m.value for m in enum_cls)
        errors[key] = f"must be one of: {choices}"
        return None


def _list(errors: _Errors, key: str, value: Any, limit: int) -> list[Any]:
    if not isinstance(value, list):
        errors[key] = "must be a list"
        return []
    if len(value) > limit:
        errors[key] = f"at most {limit} entries"
        return []
    return value


def _clean(actor: User, data: Any, site: Site | None) -> dict[str, Any]:
    """Validate and normalise site input.  Missing keys keep the site's values
    (``site`` is None on create, where defaults apply)."""
    errors = _Errors()
    if not isinstance(data, dict):
        raise ValidationError("invalid site", {"_": "must be an object"})
    allowed = SITE_FIELDS + (ADMIN_FIELDS if actor.is_admin else ())
    for key in sorted(set(data) - set(allowed)):
        errors[key] = "unknown field"
    out: dict[str, Any] = {}

    if "domain" in data or site is None:
        out["domain"] = errors.check("domain", validate_domain, data.get("domain"))
        if out["domain"] is not None:
            errors.check("domain", not_a_public_suffix, out["domain"])
    if "aliases" in data:
        aliases = []
        for i, alias in enumerate(_list(errors, "aliases", data["aliases"], LIMITS["aliases"])):
            value = errors.check(f"aliases.{i}", validate_domain, alias, allow_wildcard=True)
            if value is not None:
                errors.check(f"aliases.{i}", not_a_public_suffix, value)
                if value in aliases:
                    errors[f"aliases.{i}"] = "is listed twice"
                aliases.append(value)
        out["aliases"] = aliases
    if "backends" in data or site is None:
        address_policy = backends_service.policy()
        raw = data.get("backends")
        backends = []
        items = _list(errors, "backends", raw, LIMITS["backends"]) if raw is not None else []
        if not items and "backends" not in errors:
            errors["backends"] = "at least one backend is required"
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                errors[f"backends.{i}"] = "must be an object with host, port and weight"
                continue
            for extra in sorted(set(item) - {"host", "port", "weight"}):
                errors[f"backends.{i}.{extra}"] = "unknown field"
            host = errors.check(f"backends.{i}.host", validate_host, item.get("host"))
            if host is not None:
                refused = address_policy.refusal(host)
                if refused is not None:
                    errors[f"backends.{i}.host"] = f"is not allowed: {refused}"
            port = errors.check(f"backends.{i}.port", validate_port, item.get("port"))
            weight = errors.check(
                f"backends.{i}.weight", validate_int, item.get("weight", 1), 1, 100
            )
            backends.append({"host": host, "port": port, "weight": weight})
        out["backends"] = backends
    for key, enum_cls in (
        ("backend_protocol", BackendProtocol), ("ssl_mode", SslMode), ("waf_level", WafLevel),
    ):
        if key in data:
            out[key] = _enum(errors, key, enum_cls, data[key])
    if "acme_challenge" in data:
        if data["acme_challenge"] in ACME_CHALLENGES:
            out["acme_challenge"] = data["acme_challenge"]
        else:
            errors["acme_challenge"] = "must be one of: " + ", ".join(ACME_CHALLENGES)
    for key in ("force_https", "hsts", "http2", "websocket"):
        if key in data:
            out[key] = _bool(errors, key, data[key])
    if "pool" in data or site is None:
        name = data.get("pool")
        pool = None
        if name is None and site is None:
            pool = db.session.scalar(select(Pool).where(Pool.name == "default"))
            if pool is None:
                errors["pool"] = "is required"
        elif isinstance(name, str) and len(name) <= 64:
            pool = db.session.scalar(select(Pool).where(Pool.name == name))
            if pool is None:
                errors["pool"] = f"no pool named '{name}'"
        else:
            errors["pool"] = "must be the name of a pool"
        out["pool"] = pool
    if "cache" in data:
        cache = data["cache"]
        if not isinstance(cache, dict) or set(cache) - {"enabled", "ttl"}:
            errors["cache"] = "must be an object with enabled and ttl"
        else:
            if "enabled" in cache:
                out["cache_enabled"] = _bool(errors, "cache.enabled", cache["enabled"])
            if "ttl" in cache:
                out["cache_ttl"] = errors.check(
                    "cache.ttl", validate_int, cache["ttl"], 1, 31_536_000
                )
    if "geo" in data:
        geo = data["geo"]
        if not isinstance(geo, dict) or set(geo) - {"mode", "countries"}:
            errors["geo"] = "must be an object with mode and countries"
        else:
            if "mode" in geo:
                out["geo_mode"] = _enum(errors, "geo.mode", GeoMode, geo["mode"])
            if "countries" in geo:
                countries: list[str] = []
                raw = _list(errors, "geo.countries", geo["countries"], LIMITS["countries"])
                for i, code in enumerate(raw):
                    value = errors.check(f"geo.countries.{i}", validate_country, code)
                    if value and value not in countries:
                        countries.append(value)
                out["geo_countries"] = countries
    for key in ("ip_allow", "ip_deny"):
        if key in data:
            nets: list[str] = []
            for i, cidr in enumerate(_list(errors, key, data[key], LIMITS["ip_rules"])):
                value = errors.check(f"{key}.{i}", validate_cidr, cidr)
                if value and value not in nets:
                    nets.append(value)
            out[key] = nets
    if "basic_auth" in data:
        existing = {u.username: u.password_hash for u in (site.basic_auth_users if site else [])}
        users_out: list[dict[str, str]] = []
        raw = _list(errors, "basic_auth", data["basic_auth"], LIMITS["basic_auth"])
        for i, item in enumerate(raw):
            if not isinstance(item, dict) or set(item) - {"username", "password"}:
                errors[f"basic_auth.{i}"] = "must be an object with username and password"
                continue
            username = errors.check(
                f"basic_auth.{i}.username", validate_basic_auth_username, item.get("username")
            )
            password = item.get("password")
            if username and any(u["username"] == username for u in users_out):
                errors[f"basic_auth.{i}.username"] = "is listed twice"
            if password in (None, "") and username in existing:
                users_out.append({"username": username, "password_hash": existing[username]})
                continue
            checked = errors.check(
                f"basic_auth.{i}.password", validate_secret_text, password, max_length=128
            )
            if checked is not None and len(checked) < 8:
                errors[f"basic_auth.{i}.password"] = "must be at least 8 characters"
            elif checked is not None and len(checked.encode()) > 72:
                # bcrypt, the hash every proxy checks, reads no further than 72 bytes.
                errors[f"basic_auth.{i}.password"] = "must be at most 72 bytes"
            elif checked is not None and username:
                users_out.append({"username": username, "password": checked})
        out["basic_auth"] = users_out
    if "rate_limit" in data:
        limit = data["rate_limit"]
        if limit is None:
            out["rate_limit_rps"], out["rate_limit_burst"] = None, 0
        elif not isinstance(limit, dict) or set(limit) - {"requests_per_second", "burst"}:
            errors["rate_limit"] = "must be null or an object with requests_per_second and burst"
        else:
            out["rate_limit_rps"] = errors.check(
                "rate_limit.requests_per_second", validate_int,
                limit.get("requests_per_second"), 1, 100_000,
            )
            out["rate_limit_burst"] = errors.check(
                "rate_limit.burst", validate_int, limit.get("burst", 0), 0, 100_000
            )
    if "headers" in data:
        headers = data["headers"]
        if not isinstance(headers, dict) or len(headers) > LIMITS["headers"]:
            errors["headers"] = f"must be an object of at most {LIMITS['headers']} headers"
        else:
            clean_headers: dict[str, str] = {}
            seen: set[str] = set()
            for name, value in headers.items():
                key = f"headers.{str(name)[:64]}"
                checked_name = errors.check(key, validate_header_name, name)
                checked_value = errors.check(key, validate_header_value, value)
                if checked_name and checked_name.lower() in seen:
                    errors[key] = "is listed twice"
                if checked_name and checked_value is not None:
                    seen.add(checked_name.lower())
                    clean_headers[checked_name] = checked_value
            out["headers"] = clean_headers
    if "blocked" in data or "blocked_reason" in data:
        blocked = data.get("blocked", site.blocked if site else False)
        reason = data.get("blocked_reason", site.blocked_reason if site else "")
        if not actor.is_admin and (
            blocked != (site.blocked if site else False)
            or reason != (site.blocked_reason if site else "")
        ):
            errors["blocked"] = "only an administrator can block or unblock a site"
        else:
            out["blocked"] = _bool(errors, "blocked", blocked)
            out["blocked_reason"] = errors.check(
                "blocked_reason", validate_safe_text, reason or "", max_length=500,
                allow_empty=True,
            )
    if "owner_id" in data and actor.is_admin:
        owner = db.session.get(User, data["owner_id"]) if isinstance(
            data["owner_id"], int) and not isinstance(data["owner_id"], bool) else None
        if owner is None:
            errors["owner_id"] = "no such user"
        out["owner"] = owner
    if errors:
        raise ValidationError("invalid site", dict(errors))
    _check_consistency(out, site)
    return out


def _effective(out: dict[str, Any], site: Site | None, key: str, default: Any) -> Any:
    if key in out:
        return out[key]
    return getattr(site, key) if site is not None else default


def _check_consistency(out: dict[str, Any], site: Site | None) -> None:
    """Rules that involve several fields."""
    errors: dict[str, str] = {}
    ssl_mode = _effective(out, site, "ssl_mode", SslMode.NONE)
    if ssl_mode == SslMode.NONE:
        for key in ("force_https", "hsts"):
            if _effective(out, site, key, False):
                errors[key] = "needs TLS: choose an ssl_mode other than none"
    geo_mode = _effective(out, site, "geo_mode", GeoMode.OFF)
    if geo_mode != GeoMode.OFF and not _effective(out, site, "geo_countries", []):
        errors["geo.countries"] = "list at least one country for this mode"
    if _effective(out, site, "blocked", False) and not _effective(out, site, "blocked_reason", ""):
        errors["blocked_reason"] = "say why the site is blocked (shown to visitors)"
    domain = out.get("domain") or (site.domain if site else None)
    if domain and domain in out.get("aliases", []):
        errors["aliases"] = "must not repeat the domain"
    aliases = out["aliases"] if "aliases" in out else (site.aliases if site else [])
    if (ssl_mode == SslMode.LETSENCRYPT
            and _effective(out, site, "acme_challenge", "http-01") == "http-01"
            and any(isinstance(n, str) and n.startswith("*.") for n in aliases)):
        errors["acme_challenge"] = ("wildcard names can only be validated with dns-01 "
                                    "(a TXT record in the zone's DNS)")
    if errors:
        raise ValidationError("invalid site", errors)


# The Public Suffix List, bundled with the package and loaded once.
_PUBLIC_SUFFIXES = PublicSuffixList()


# Top-level names that never reach a public site (RFC 6761); the deployment probe
# lives under one of them, so a site there could pass for the probe on every node.
RESERVED_TLDS = ("invalid", "localhost", "local")


def not_a_public_suffix(name: str) -> str:
    """A site cannot be, or cover with a wildcard, a name under which anyone may
    register (``com``, ``co.uk``, ``github.io``): it would claim everybody's sites.
    Nor can it take a reserved name (the probe's ``rpcc-probe.invalid`` among them)."""
    base = name[2:] if name.startswith("*.") else name
    if base.rsplit(".", 1)[-1] in RESERVED_TLDS:
        raise ValueError(f"names under .{base.rsplit('.', 1)[-1]} are reserved and never "
                         "served as sites")
    if _PUBLIC_SUFFIXES.is_public(base):
        raise ValueError(f"{base} is a public suffix: name a domain registered under it")
    return name


def _names_taken(names: list[str], exclude_site_id: int | None) -> set[str]:
    if not names:
        return set()
    stmt = select(SiteHostname.name).where(SiteHostname.name.in_(names))
    if exclude_site_id is not None:
        stmt = stmt.where(SiteHostname.site_id != exclude_site_id)
    return set(db.session.scalars(stmt))


def _apply(site: Site, out: dict[str, Any]) -> None:
    """Write validated input onto the site; every check that can refuse runs first,
    so a refusal leaves the site untouched."""
    if "domain" in out or "aliases" in out:
        domain = out.get("domain", site.domain)
        aliases = out.get("aliases", site.aliases if site.hostnames else [])
        taken = _names_taken([domain, *aliases], site.id)
        if taken:
            field = "domain" if domain in taken else "aliases"
            raise ValidationError(
                "invalid site", {field: f"already used by another site: {', '.join(sorted(taken))}"}
            )
        owner_id = site.owner.id if site.owner is not None else site.owner_id
        held = held_by_others([domain, *aliases], owner_id, site.id)
        if held:
            errors = {}
            for name in held:
                field = "domain" if name == domain else f"aliases.{aliases.index(name)}"
                # Never which name: that would tell one tenant another's sites.
                errors[field] = (f"{name} is held by another client (the same name, a name "
                                 "under it or one over it)")
            raise ValidationError("invalid site", errors)
    simple = (
        "backend_protocol", "ssl_mode", "acme_challenge", "force_https", "hsts", "http2",
        "websocket", "waf_level", "cache_enabled", "cache_ttl", "geo_mode", "geo_countries",
        "ip_allow", "ip_deny", "rate_limit_rps", "rate_limit_burst", "headers", "blocked",
        "blocked_reason", "pool", "owner",
    )
    for key in simple:
        if key in out:
            setattr(site, key, out[key])
    if "domain" in out or "aliases" in out:
        site.domain = domain
        wanted = [domain, *aliases]
        current = {h.name: h for h in site.hostnames}
        site.hostnames = [
            current.get(name) or SiteHostname(name=name) for name in wanted
        ]
        for position, hostname in enumerate(site.hostnames):
            hostname.position = position
    if "backends" in out:
        site.backends = [
            SiteBackend(host=b["host"], port=b["port"], weight=b["weight"], position=i)
            for i, b in enumerate(out["backends"])
        ]
    if "basic_auth" in out:
        current_users = {u.username: u for u in site.basic_auth_users}
        result = []
        for item in out["basic_auth"]:
            row = current_users.get(item["username"]) or SiteBasicAuthUser(
                username=item["username"]
            )
            row.password_hash = item.get("password_hash") or hash_basic_auth_password(
                item["password"]
            )
            result.append(row)
        site.basic_auth_users = result


def _check_engines(site: Site) -> None:
    """Refuse what an engine of the pool cannot honour; the changes already applied
    to the session are discarded so that nothing half-saved remains."""
    try:
        rendering.check_engines_support(site)
    except ValidationError:
        db.session.rollback()
        raise


# Bookkeeping that changes by itself, not by what a person submitted.
_DERIVED_FIELDS = ("status", "config_version", "created_at", "updated_at")


def _changed_fields(before: dict[str, Any], after: dict[str, Any],
                    out: dict[str, Any]) -> list[str]:
    """The fields whose value really changed (a form submits every field; the audit
    log and the config version care only about what differs). A basic-auth password
    is write-only: a new one is a change even though the listing looks the same."""
    changed = [key for key in after if key not in _DERIVED_FIELDS
               and before.get(key) != after[key]]
    if "basic_auth" not in changed and any("password" in item
                                           for item in out.get("basic_auth", [])):
        changed.append("basic_auth")
    return sorted(changed)


def _commit_or_conflict() -> None:
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise Conflict("another site took one of these names at the same moment; retry") from None


def check_site(actor: User, data: dict[str, Any], site_id: int | None = None) -> dict[str, str]:
    """The field errors ``create_site`` (or ``update_site`` of ``site_id``) would raise
    for ``data``, without writing anything: forms show them beside their own."""
    site = get_site(actor, site_id) if site_id is not None else None
    try:
        _clean(actor, data, site)
    except ValidationError as exc:
        return dict(exc.fields)
    return {}


def create_site(actor: User, data: dict[str, Any]) -> Site:
    out = _clean(actor, data, None)
    owner: User = out.pop("owner", None) or actor
    # Lock the owner's row so that two concurrent creates cannot both pass the quota.
    db.session.execute(select(User.id).where(User.id == owner.id).with_for_update())
    count = db.session.scalar(select(func.count()).where(Site.owner_id == owner.id)) or 0
    if count >= owner.max_sites:
        raise Conflict(
            f"site quota reached: {owner.username} may have {owner.max_sites} site(s)"
        )
    site = Site(owner=owner, hostnames=[], backends=[], basic_auth_users=[])
    out.setdefault("aliases", [])
    _apply(site, out)
    _keep_names_blocked(actor, site, was_blocked=False)
    db.session.add(site)
    db.session.flush()
    _check_engines(site)
    certificates.sync_site(site)
    audit.record(actor, "site.create", "site", site.id,
                 {"domain": site.domain, "owner": owner.username})
    _commit_or_conflict()
    return site


def update_site(actor: User, site_id: int, data: dict[str, Any]) -> Site:
    site = get_site(actor, site_id)
    out = _clean(actor, data, site)
    if "owner" in out and out["owner"].id != site.owner_id:
        new_owner = out["owner"]
        count = db.session.scalar(select(func.count()).where(Site.owner_id == new_owner.id)) or 0
        if count >= new_owner.max_sites:
            raise Conflict(f"site quota reached for {new_owner.username}")
    before = site_to_dict(site, admin=True)
    _apply(site, out)
    _keep_names_blocked(actor, site, was_blocked=before["blocked"])
    _check_engines(site)
    changed = _changed_fields(before, site_to_dict(site, admin=True), out)
    if changed:
        site.config_version += 1
    certificates.sync_site(site)
    audit.record(actor, "site.update", "site", site.id,
                 {"domain": site.domain, "fields": changed})
    _commit_or_conflict()
    return site


def _keep_names_blocked(actor: User, site: Site, *, was_blocked: bool) -> None:
    """Blocked names outlive their site: blocking records the site's names, a site
    that takes a blocked name is blocked with the recorded reason, and only an
    administrator unblocking a site lifts the block of its names."""
    names = [site.domain, *site.aliases]
    records = {row.name: row for row in db.session.scalars(
        select(BlockedName).where(BlockedName.name.in_(names)))}
    if site.blocked:
        for name in names:
            if name not in records:
                db.session.add(BlockedName(name=name, reason=site.blocked_reason,
                                           blocked_by=actor.username))
        return
    if was_blocked and actor.is_admin:  # an administrator lifts the block
        for row in records.values():
            db.session.delete(row)
        audit.record(actor, "site.unblock_names", "site", site.id, {"names": sorted(records)})
        return
    if records:
        first = records[sorted(records)[0]]
        site.blocked, site.blocked_reason = True, first.reason or "blocked by an administrator"


def set_blocked(actor: User, site_id: int, blocked: bool, reason: str = "") -> Site:
    require_admin(actor)
    return update_site(actor, site_id, {"blocked": blocked, "blocked_reason": reason})


def delete_site(actor: User, site_id: int) -> None:
    site = get_site(actor, site_id)
    audit.record(actor, "site.delete", "site", site.id, {"domain": site.domain})
    db.session.delete(site)
    db.session.commit()


def get_site(actor: User, site_id: int) -> Site:
    return get_scoped(Site, site_id, actor, "site")


def get_site_by_domain(actor: User, domain: str) -> Site:
    """The site whose main name is ``domain`` (command-line tools name sites so)."""

    site = db.session.scalar(scoped(select(Site).where(Site.domain == domain), actor, Site))
    if site is None:
        raise NotFound(f"no site {domain!r}")
    return site


def list_sites(
    actor: User,
    *,
    page: int = 1,
    per_page: int = 50,
    owner_id: int | None = None,
    q: str | None = None,
    pool: str | None = None,
    state: str | None = None,
    certificate: str | None = None,
    sort: str = "domain",
) -> Page[Site]:
    """Clients get their own sites; admins all, optionally filtered by owner.

    :param state: one of ``dashboard.SITE_STATES``; ``certificate`` one of
        ``dashboard.CERTIFICATE_STATES`` (the dashboards link here).
    """
    from app.services.dashboard import (
        CERTIFICATE_STATES,
        SITE_STATES,
        certificate_state_filter,
        site_state_filter,
    )

    orders = {"domain": Site.domain, "-updated": Site.updated_at.desc(),
              "status": Site.status}
    if sort not in orders:
        raise ValidationError("unknown sort", {"sort": f"one of {', '.join(orders)}"})
    stmt = scoped(select(Site).options(*_LOAD_OPTIONS), actor, Site).order_by(
        orders[sort], Site.domain)
    if state:
        if state not in SITE_STATES:
            raise ValidationError("unknown state", {"state": f"one of {', '.join(SITE_STATES)}"})
        stmt = stmt.where(site_state_filter(state))
    if certificate:
        if certificate not in CERTIFICATE_STATES:
            raise ValidationError("unknown certificate state", {
                "certificate": f"one of {', '.join(CERTIFICATE_STATES)}"})
        stmt = stmt.where(certificate_state_filter(certificate))
    if owner_id is not None and actor.is_admin:
        stmt = stmt.where(Site.owner_id == owner_id)
    if q:
        like = f"%{q.lower()}%"
        stmt = stmt.where(or_(Site.domain.like(like),
                              Site.id.in_(select(SiteHostname.site_id)
                                          .where(SiteHostname.name.like(like)))))
    if pool:
        stmt = stmt.join(Site.pool).where(Pool.name == pool)
    return paginate(stmt, page, per_page)


@dataclass(frozen=True)
class SiteSummary:
    """How a site stands: live on ``deployed`` of the ``target`` nodes that should
    serve it now, and its latest deployment."""

    deployed: int
    target: int
    last_rollout: Rollout | None


def site_summaries(actor: User, listed: list[Site]) -> dict[int, SiteSummary]:
    """Summaries of listed sites in two queries whatever their number. The target is
    counted now (a node added to the pool since the last deployment counts), so a
    page never says "deployed on 0 of 0 nodes" of a pool that has nodes."""
    if not listed:
        return {}
    pool_ids = {site.pool_id for site in listed}
    targets = dict(db.session.execute(
        select(Node.pool_id, func.count()).where(
            Node.pool_id.in_(pool_ids), Node.enabled.is_(True),
            Node.status != NodeStatus.DRAINING).group_by(Node.pool_id)).all())
    ids = [site.id for site in listed]
    latest = select(func.max(Rollout.id)).where(Rollout.site_id.in_(ids)).group_by(
        Rollout.site_id)
    rollouts = {r.site_id: r for r in db.session.scalars(
        scoped(select(Rollout), actor, Rollout).where(Rollout.id.in_(latest)))}
    return {site.id: SiteSummary(min(site.deployed_nodes, targets.get(site.pool_id, 0)),
                                 targets.get(site.pool_id, 0), rollouts.get(site.id))
            for site in listed}


def count_sites(actor: User) -> int:
    stmt = scoped(select(func.count(Site.id)), actor, Site)
    return db.session.scalar(stmt) or 0


def site_to_dict(site: Site, *, admin: bool) -> dict[str, Any]:
    """The API representation (field names are a stable contract); admins also see
    the owner and bookkeeping fields."""
    data: dict[str, Any] = {
        "id": site.id,
        "domain": site.domain,
        "aliases": site.aliases,
        "backends": [{"host": b.host, "port": b.port, "weight": b.weight} for b in site.backends],
        "backend_protocol": site.backend_protocol.value,
        "pool": site.pool.name,
        "ssl_mode": site.ssl_mode.value,
        "acme_challenge": site.acme_challenge,
        "force_https": site.force_https,
        "hsts": site.hsts,
        "http2": site.http2,
        "websocket": site.websocket,
        "waf_level": site.waf_level.value,
        "cache": {"enabled": site.cache_enabled, "ttl": site.cache_ttl},
        "geo": {"mode": site.geo_mode.value, "countries": list(site.geo_countries)},
        "ip_allow": list(site.ip_allow),
        "ip_deny": list(site.ip_deny),
        "basic_auth": [{"username": u.username} for u in site.basic_auth_users],
        "rate_limit": site.rate_limit,
        "headers": dict(site.headers),
        "blocked": site.blocked,
        "blocked_reason": site.blocked_reason,
        "status": site.status.value,
        "config_version": site.config_version,
        "deployed_nodes": site.deployed_nodes,
        "target_nodes": site.target_nodes,
        "refused_reason": (site.refused_reason
                           if site.refused_version == site.config_version else ""),
        "deploy_warning": site.deploy_warning,
        "created_at": as_utc(site.created_at).isoformat() if site.created_at else None,
        "updated_at": as_utc(site.updated_at).isoformat() if site.updated_at else None,
    }
    if admin:
        data["owner_id"] = site.owner_id
        data["owner"] = site.owner.username
    return data


def owner_choices(actor: User) -> list[User]:
    require_admin(actor)
    return list(db.session.scalars(select(User).order_by(User.username)))


def get_owner(actor: User, user_id: int) -> User:
    require_admin(actor)
    return get_or_404(User, user_id, "user")
