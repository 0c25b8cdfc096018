"""Nameserver (NS) checks: is each name of each site in a zone delegated to the
nameservers the administrators expect?

Administrators set the expected nameservers for every zone (Settings) and per zone
(``ZoneNameservers``, which outranks the global list for the zone and the zones
under it).  A check finds the zone of a name by walking up its labels and asking the
configured resolvers for NS records (NS only: whether names point at the pool is the
ACME pre-check's business), then compares the set found with the set expected.  The
last result per (site, name) is one ``NameserverCheck`` row, which the site's page,
the dashboard and the alerts read.

Lookups run in worker threads that never touch the database, a bounded number at
once, each bounded by ``DNS_TIMEOUT``; the rows are written afterwards by the caller.

"Check now" (:func:`request_check`) never holds a request for as long as the
resolvers take: the check runs as background work (:mod:`app.executor`), and the
request answers at once.  One check of a site runs at a time in the whole
deployment: a lease row (``scheduler_leases``, named after the site) is taken
before it starts and given back when it ends, so a second request, on any app
instance, joins the running check instead of starting another; a lease whose
holder died expires after the longest time its check could take.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import dns.exception
import dns.name
import dns.resolver
from flask import current_app
from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from app.errors import ValidationError
from app.executor import background, executor
from app.extensions import db
from app.models import (
    NameserverCheck,
    NameserverStatus,
    SchedulerLease,
    Setting,
    Site,
    SiteHostname,
    User,
    ZoneNameservers,
)
from app.models.base import as_utc, utcnow
from app.security import validate_domain
from app.services import audit, resolvers
from app.services.common import Page, get_or_404, get_scoped, paginate, require_admin

logger = logging.getLogger(__name__)

#: The Settings row holding the nameservers every zone is expected to have.
EXPECTED_SETTING = "expected_nameservers"
MAX_NAMESERVERS = 20
#: After this many lookups in a row find the resolvers silent or unreachable, the
#: rest of a run fails at once with the same reason instead of waiting name by name.
GIVE_UP_AFTER = 3
_ERROR_LENGTH = 300
NO_RESOLVERS = ("no DNS resolvers are configured: an administrator sets them in Settings "
                "(Nameservers) or with DNS_RESOLVERS")
# Worst first: what a site's page and the API show for the site as a whole.
_SEVERITY = (NameserverStatus.MISMATCH, NameserverStatus.ERROR, NameserverStatus.OK)


# --------------------------------------------------------------------------- #
# What administrators expect                                                  #
# --------------------------------------------------------------------------- #

def _clean_nameservers(value: Any, *, allow_empty: bool) -> list[str]:
    """Host names in their ASCII form, in the order given, without duplicates."""
    if not isinstance(value, list):
        raise ValueError("must be a list of nameserver names such as ns1.example.net")
    if len(value) > MAX_NAMESERVERS:
        raise ValueError(f"list at most {MAX_NAMESERVERS} nameservers")
    clean: list[str] = []
    for entry in value:
        if not isinstance(entry, str) or not entry.strip():
            raise ValueError("each nameserver must be a name such as ns1.example.net")
        try:
            ipaddress.ip_address(entry.strip("[]"))
        except ValueError:
            pass
        else:
            raise ValueError(f"'{entry[:60]}' is an address: NS records name hosts, such "
                             "as ns1.example.net")
        try:
            name = validate_domain(entry)
        except ValueError as exc:
            raise ValueError(f"'{entry[:70]}' {exc}") from None
        if name not in clean:
            clean.append(name)
    if not clean and not allow_empty:
        raise ValueError("list at least one nameserver, such as ns1.example.net")
    return clean


def _global_expected() -> list[str]:
    row = db.session.get(Setting, EXPECTED_SETTING)
    return [name for name in (row.value if row else "").split(",") if name]


def _resolver_state() -> tuple[list[str], str]:
    """The resolvers in force as text, and why they cannot be used if they cannot."""
    try:
        return [str(server) for server in resolvers.configured()], ""
    except ValueError as exc:
        return [], f"DNS_RESOLVERS is not a list of addresses: {exc}"


def get_settings(actor: User) -> dict[str, Any]:
    """The Settings page's Nameservers section and ``/api/v1/settings/nameservers``."""
    require_admin(actor)
    in_force, problem = _resolver_state()
    try:
        environment = [str(server) for server in resolvers.parse_resolvers(
            current_app.config["DNS_RESOLVERS"] or "")]
    except ValueError:
        environment = []
    return {
        "nameservers": _global_expected(),
        "resolvers": in_force,
        "resolver_problem": problem,
        "overridden": ["resolvers"] if resolvers.stored() is not None else [],
        "environment": {"resolvers": environment},
        "zones": db.session.scalar(select(func.count(ZoneNameservers.id))) or 0,
    }


def update_settings(actor: User, data: dict[str, Any]) -> dict[str, Any]:
    """Set the nameservers every zone is expected to have (an empty list: none), or
    the resolvers to ask (``null``: the environment's ``DNS_RESOLVERS``).  Keys left
    out keep their value."""
    require_admin(actor)
    if not isinstance(data, dict):
        raise ValidationError("invalid settings", {"_": "must be an object"})
    errors = {key: "unknown field" for key in sorted(set(data) - {"nameservers", "resolvers"})}
    clean: dict[str, str | None] = {}
    if "nameservers" in data:
        try:
            clean[EXPECTED_SETTING] = ",".join(_clean_nameservers(data["nameservers"],
                                                                  allow_empty=True))
        except ValueError as exc:
            errors["nameservers"] = str(exc)
    if "resolvers" in data:
        value = data["resolvers"]
        if value is None:
            clean[resolvers.SETTING] = None
        elif not isinstance(value, list):
            errors["resolvers"] = ("must be a list of addresses such as 192.0.2.53 or "
                                   "127.0.0.1:5300 (null for DNS_RESOLVERS)")
        else:
            try:
                clean[resolvers.SETTING] = ",".join(
                    str(server) for server in resolvers.parse_resolvers(value))
            except ValueError as exc:
                errors["resolvers"] = str(exc)
    if errors:
        raise ValidationError("invalid nameserver settings", errors)
    before = get_settings(actor)
    for key, value in clean.items():
        row = db.session.get(Setting, key)
        if value is None or (key == EXPECTED_SETTING and not value):
            if row is not None:
                db.session.delete(row)
            continue
        if row is None:
            row = Setting(key=key)
            db.session.add(row)
        row.value = value
        row.updated_by_id = actor.id
    db.session.flush()
    after = get_settings(actor)
    changes = {name: {"old": before[name], "new": after[name]}
               for name in ("nameservers", "resolvers", "overridden")
               if before[name] != after[name]}
    if changes:
        audit.record(actor, "settings.nameservers", "settings", "nameservers", changes)
    db.session.commit()
    return after


# -- per zone ------------------------------------------------------------------------

def _clean_zone(data: Any, *, partial: bool) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValidationError("invalid zone", {"_": "must be an object"})
    errors = {key: "unknown field" for key in sorted(set(data) - {"zone", "nameservers"})}
    clean: dict[str, Any] = {}
    if "zone" in data or not partial:
        try:
            clean["zone"] = validate_domain(data.get("zone"))
        except ValueError as exc:
            errors["zone"] = str(exc)
    if "nameservers" in data or not partial:
        try:
            clean["nameservers"] = _clean_nameservers(data.get("nameservers"),
                                                      allow_empty=False)
        except ValueError as exc:
            errors["nameservers"] = str(exc)
    if errors:
        raise ValidationError("invalid zone", errors)
    return clean


def _check_zone_free(zone: str, exclude_id: int | None) -> None:
    stmt = select(ZoneNameservers.id).where(ZoneNameservers.zone == zone)
    if exclude_id is not None:
        stmt = stmt.where(ZoneNameservers.id != exclude_id)
    if db.session.scalar(stmt) is not None:
        raise ValidationError("invalid zone", {
            "zone": "already has expected nameservers: change that zone instead"})


def list_zones(actor: User, *, page: int = 1, per_page: int = 50,
               q: str | None = None) -> Page[ZoneNameservers]:
    require_admin(actor)
    stmt = select(ZoneNameservers).order_by(ZoneNameservers.zone)
    if q:
        stmt = stmt.where(ZoneNameservers.zone.like(f"%{q.lower()}%"))
    return paginate(stmt, page, per_page)


def get_zone(actor: User, zone_id: int) -> ZoneNameservers:
    require_admin(actor)
    return get_or_404(ZoneNameservers, zone_id, "zone")


def create_zone(actor: User, data: dict[str, Any]) -> ZoneNameservers:
    """Expect ``nameservers`` for ``zone`` and every zone under it that has no list of
    its own, instead of the global list."""
    require_admin(actor)
    clean = _clean_zone(data, partial=False)
    _check_zone_free(clean["zone"], None)
    row = ZoneNameservers(**clean)
    db.session.add(row)
    db.session.flush()
    audit.record(actor, "nameserver_zone.create", "nameserver_zone", row.id, clean)
    db.session.commit()
    return row


def update_zone(actor: User, zone_id: int, data: dict[str, Any]) -> ZoneNameservers:
    """Keys left out keep their value."""
    require_admin(actor)
    row = get_or_404(ZoneNameservers, zone_id, "zone")
    clean = _clean_zone(data, partial=True)
    if "zone" in clean:
        _check_zone_free(clean["zone"], row.id)
    for key, value in clean.items():
        setattr(row, key, value)
    audit.record(actor, "nameserver_zone.update", "nameserver_zone", row.id, clean)
    db.session.commit()
    return row


def delete_zone(actor: User, zone_id: int) -> None:
    """Names of the zone are held to the global list (or a parent zone's) again."""
    require_admin(actor)
    row = get_or_404(ZoneNameservers, zone_id, "zone")
    audit.record(actor, "nameserver_zone.delete", "nameserver_zone", row.id,
                 {"zone": row.zone})
    db.session.delete(row)
    db.session.commit()


@dataclass(frozen=True)
class Expectations:
    """The global list and the per-zone lists, read once per check."""

    everywhere: tuple[str, ...]
    zones: dict[str, tuple[str, ...]]

    @property
    def empty(self) -> bool:
        return not self.everywhere and not self.zones

    def zone_of(self, name: str) -> str:
        """The longest configured zone ``name`` is in (label-wise), or ``""``."""
        labels = name.split(".")
        return next((suffix for suffix in (".".join(labels[i:]) for i in range(len(labels)))
                     if suffix in self.zones), "")

    def for_name(self, name: str) -> tuple[str, ...]:
        zone = self.zone_of(name)
        return self.zones[zone] if zone else self.everywhere


def expectations() -> Expectations:
    rows = db.session.execute(select(ZoneNameservers.zone, ZoneNameservers.nameservers))
    return Expectations(tuple(_global_expected()),
                        {zone: tuple(names) for zone, names in rows})


# --------------------------------------------------------------------------- #
# Asking DNS                                                                  #
# --------------------------------------------------------------------------- #

class _Unanswered(Exception):
    """The resolvers gave no usable answer about a name (the message says why)."""


@dataclass(frozen=True)
class Lookup:
    """What DNS says of one name: its zone and that zone's nameservers, whether the
    name itself exists, or why none of that could be learnt."""

    zone: str = ""
    found: tuple[str, ...] = ()
    missing: bool = False
    error: str = ""


def _describe(exc: dns.exception.DNSException, name: str, timeout: float) -> tuple[str, bool]:
    """The reason in words (never the resolvers' addresses, which clients must not
    learn), and whether it is the resolvers themselves that failed."""
    if isinstance(exc, dns.exception.Timeout):
        return f"the DNS resolvers did not answer within {timeout:g} s (timeout)", True
    if isinstance(exc, dns.resolver.NoNameservers):
        answers = {error[3] for error in exc.kwargs.get("errors") or []
                   if isinstance(error[3], str)}
        if answers:
            return (f"the DNS resolvers could not answer for {name}: they said "
                    f"{', '.join(sorted(answers))}"), False
        return "the DNS resolvers are unreachable (no answer, connection refused)", True
    return f"the DNS lookup of {name} failed: {exc.__class__.__name__}", False


class Resolvers:
    """The configured resolvers, shared by a check's worker threads: every NS answer
    is asked once per check, and once they have failed ``GIVE_UP_AFTER`` times in a
    row the remaining names fail at once with the same reason."""

    def __init__(self, servers: Sequence[resolvers.ResolverAddress], timeout: float) -> None:
        self.servers, self.timeout = tuple(servers), timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._answers: dict[str, tuple[str, tuple[str, ...]] | _Unanswered] = {}
        self._failures = 0
        self._gave_up = ""

    def _resolver(self) -> dns.resolver.Resolver:
        resolver = getattr(self._local, "resolver", None)
        if resolver is None:
            resolver = self._local.resolver = resolvers.make_resolver(self.servers,
                                                                      self.timeout)
        return resolver

    def ns(self, name: str) -> tuple[str, tuple[str, ...]]:
        """``("answer", nameservers)``, ``("nodata", ())`` (the name exists but is not
        a zone, or is an alias) or ``("nxdomain", ())``.

        :raises _Unanswered: the resolvers failed.
        """
        with self._lock:
            known = self._answers.get(name)
            if self._gave_up and known is None:
                known = _Unanswered(self._gave_up)
        if isinstance(known, _Unanswered):
            raise _Unanswered(str(known))
        if known is not None:
            return known
        qname = dns.name.from_text(name)
        try:
            answer = self._resolver().resolve(qname, "NS", search=False,
                                              raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            result: tuple[str, tuple[str, ...]] = ("nxdomain", ())
        except dns.exception.DNSException as exc:
            message, broken = _describe(exc, name, self.timeout)
            failure = _Unanswered(message)
            with self._lock:
                self._answers[name] = failure
                self._failures = self._failures + 1 if broken else 0
                if self._failures >= GIVE_UP_AFTER and not self._gave_up:
                    logger.warning("nameserver check: resolvers failed %d times in a row, "
                                   "the remaining names are not asked: %s", self._failures,
                                   message)
                    self._gave_up = message
            raise failure from None
        else:
            if answer.rrset is None or answer.canonical_name != qname:
                result = ("nodata", ())
            else:
                result = ("answer", tuple(sorted({
                    rdata.target.to_text(omit_final_dot=True).lower()
                    for rdata in answer.rrset})))
        with self._lock:
            self._answers[name] = result
            self._failures = 0
        return result

    def lookup(self, hostname: str, top: str = "") -> Lookup:
        """Walk up from ``hostname`` to the first name with NS records: its zone.
        The walk stops at ``top`` (a configured zone) and never asks about a
        top-level domain."""
        name = hostname.removeprefix("*.")
        labels = name.split(".")
        missing = False
        for i in range(len(labels) - 1):
            candidate = ".".join(labels[i:])
            try:
                kind, found = self.ns(candidate)
            except _Unanswered as exc:
                return Lookup(missing=missing, error=str(exc))
            if kind == "answer":
                return Lookup(candidate, found, missing)
            if kind == "nxdomain" and i == 0:
                missing = True
            if candidate == top:
                return Lookup(missing=missing, error=f"zone {top} has no NS records")
        if missing:
            return Lookup(missing=True, error=(
                f"{hostname} does not exist (NXDOMAIN): its domain is not registered, or "
                "not delegated to nameservers the resolvers reach"))
        return Lookup(error=f"no NS records for {name} or any name above it")


@dataclass(frozen=True)
class Outcome:
    zone: str
    status: NameserverStatus
    expected: list[str]
    found: list[str]
    error: str


def _names(values: Iterable[str]) -> str:
    return ", ".join(values) or "none"


def judge(hostname: str, lookup: Lookup, expected_by: Expectations) -> Outcome:
    """Compare what DNS said of ``hostname`` with what is expected of its zone (the
    zone's own list outranks the global one)."""
    zone = lookup.zone
    expected = list(expected_by.for_name(zone or hostname.removeprefix("*.")))
    found = list(lookup.found)

    def outcome(status: NameserverStatus, error: str = "") -> Outcome:
        return Outcome(zone, status, expected, found, error[:_ERROR_LENGTH])

    if lookup.error:
        return outcome(NameserverStatus.ERROR, lookup.error)
    if lookup.missing:
        return outcome(NameserverStatus.ERROR, f"{hostname} does not exist in zone {zone} "
                       "(NXDOMAIN): add a record for it there")
    if not expected:
        return outcome(NameserverStatus.ERROR, f"no nameservers are expected for zone {zone}: "
                       "an administrator sets them in Settings (Nameservers) or for the zone")
    if set(found) == set(expected):
        return outcome(NameserverStatus.OK)
    missing = [name for name in expected if name not in found]
    extra = [name for name in found if name not in expected]
    detail = "; ".join(part for part in (
        f"missing {_names(missing)}" if missing else "",
        f"not expected {_names(extra)}" if extra else "") if part)
    return outcome(NameserverStatus.MISMATCH,
                   f"zone {zone} is served by {_names(found)} ({detail})")


def _look_up(hostnames: Sequence[str], expected_by: Expectations,
             servers: Sequence[resolvers.ResolverAddress]) -> dict[str, Lookup]:
    """Every hostname's lookup, a bounded number at once (no database here)."""
    cfg = current_app.config
    asking = Resolvers(servers, float(cfg["DNS_TIMEOUT"]))
    workers = max(1, min(int(cfg["NAMESERVER_CHECK_PARALLELISM"]), len(hostnames)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rpcc-ns") as pool:
        futures = {name: pool.submit(asking.lookup, name, expected_by.zone_of(
            name.removeprefix("*."))) for name in hostnames}
        return {name: future.result() for name, future in futures.items()}


# --------------------------------------------------------------------------- #
# Checks                                                                      #
# --------------------------------------------------------------------------- #

def _check(site_ids: Sequence[int] | None) -> Counter[str]:
    """Check every name of the sites (all sites when None) and store the results;
    returns the number of names per status.

    Without resolvers every name gets that as its error: the scheduler's job never
    gets this far, an explicit check says why it could not look."""
    stmt = select(SiteHostname.site_id, SiteHostname.name).order_by(SiteHostname.site_id,
                                                                    SiteHostname.position)
    if site_ids is not None:
        stmt = stmt.where(SiteHostname.site_id.in_(site_ids))
    targets = [(site_id, name) for site_id, name in db.session.execute(stmt)]
    expected_by = expectations()
    try:
        servers = resolvers.configured()
        problem = "" if servers else NO_RESOLVERS
    except ValueError as exc:
        servers, problem = (), f"DNS_RESOLVERS is not a list of addresses: {exc}"
    # No database connection is held while the resolvers work.
    db.session.commit()
    hostnames = sorted({name for _, name in targets})
    if problem:
        lookups = {name: Lookup(error=problem) for name in hostnames}
    else:
        lookups = _look_up(hostnames, expected_by, servers)
    outcomes = {(site_id, name): judge(name, lookups[name], expected_by)
                for site_id, name in targets}
    for attempt in range(2):
        try:
            _store(site_ids, outcomes)
            break
        except IntegrityError:
            # A check of the same site ran at the same time and inserted first (or a
            # site went away): once more, updating its rows.
            db.session.rollback()
            if attempt:
                raise
    return Counter(outcome.status.value for outcome in outcomes.values())


def _store(site_ids: Sequence[int] | None,
           outcomes: dict[tuple[int, str], Outcome]) -> None:
    now = utcnow()
    stmt = select(NameserverCheck)
    if site_ids is not None:
        stmt = stmt.where(NameserverCheck.site_id.in_(site_ids))
    existing = {(row.site_id, row.hostname): row for row in db.session.scalars(stmt)}
    # Sites deleted while their names were looked up get no rows.
    alive = set(db.session.scalars(select(Site.id).where(
        Site.id.in_({site_id for site_id, _ in outcomes}))))
    for key, stale in existing.items():
        if key not in outcomes:
            db.session.delete(stale)
    for (site_id, hostname), outcome in outcomes.items():
        if site_id not in alive:
            continue
        row = existing.get((site_id, hostname))
        if row is None:
            row = NameserverCheck(site_id=site_id, hostname=hostname)
            db.session.add(row)
        row.zone, row.status = outcome.zone, outcome.status
        row.expected, row.found, row.error = outcome.expected, outcome.found, outcome.error
        row.checked_at = now
    db.session.commit()


#: The background work of "check now", and its kind in :mod:`app.executor`.
CHECK_WORK = "nameserver-check"
#: Seconds a check's lease outlives the longest its lookups could take.
CHECK_LEASE_MARGIN = 60.0


def _lease_name(site_id: int) -> str:
    return f"{CHECK_WORK}:{site_id}"


def _longest_check(names: Sequence[str]) -> float:
    """Seconds a check of ``names`` can take at most: one lookup per label each name
    walks up, one after another, each within ``DNS_TIMEOUT``."""
    lookups = sum(max(1, name.removeprefix("*.").count(".")) for name in names)
    return float(current_app.config["DNS_TIMEOUT"]) * max(1, lookups) + CHECK_LEASE_MARGIN


def _take_check_lease(site_id: int, seconds: float) -> str | None:
    """The holder of the site's check lease if this request took it (the lease is
    free, or its holder died); None while another check of the site runs."""
    now = utcnow()
    holder = uuid.uuid4().hex
    values = {"holder": holder, "heartbeat_at": now,
              "expires_at": now + timedelta(seconds=seconds)}
    name = _lease_name(site_id)
    if db.session.execute(update(SchedulerLease).where(
            SchedulerLease.name == name, SchedulerLease.expires_at < now).values(**values)
    ).rowcount:  # type: ignore[attr-defined]
        db.session.commit()
        return holder
    try:
        with db.session.begin_nested():
            db.session.execute(insert(SchedulerLease).values(name=name, **values))
    except IntegrityError:
        db.session.commit()
        return None
    db.session.commit()
    return holder


def _running_since(site_id: int) -> datetime | None:
    """When the site's running check started (None: no check runs)."""
    started = db.session.scalar(select(SchedulerLease.heartbeat_at).where(
        SchedulerLease.name == _lease_name(site_id), SchedulerLease.expires_at >= utcnow()))
    return as_utc(started) if started else None


@dataclass(frozen=True)
class CheckRequest:
    """What "check now" did: ``started`` a check of the site's names, or joined the
    one running; and the site's last results, with that check running."""

    started: bool
    nameservers: SiteNameservers


def request_check(actor: User, site_id: int) -> CheckRequest:
    """Check the site's names in the background now ("check now" on its page, POST
    in the API), unless a check of the site runs already anywhere: the request
    joins it.  Answers at once; the results replace the site's last ones when the
    check ends (:func:`site_nameservers` says while it runs).

    :raises NotFound: when the site is not the actor's (another client's too).
    """
    site: Site = get_scoped(Site, site_id, actor, "site")
    holder = _take_check_lease(site.id, _longest_check(site.server_names))
    if holder is not None:
        executor.submit(CHECK_WORK, site.id, run_requested_check, site.id, holder)
    return CheckRequest(holder is not None, site_nameservers(actor, site.id))


@background(CHECK_WORK)
def run_requested_check(site_id: int, holder: str) -> None:
    """The work of :func:`request_check`: check the site's names, then give the
    site's check lease back (if it is still this check's)."""
    try:
        _check([site_id])
    finally:
        db.session.rollback()
        db.session.execute(delete(SchedulerLease).where(
            SchedulerLease.name == _lease_name(site_id), SchedulerLease.holder == holder))
        db.session.commit()


def wait_for_check(site_id: int, timeout: float | None = 60.0) -> None:
    """Wait for the site's check that this process started, if one runs (the CLI
    and the tests)."""
    executor.join(CHECK_WORK, site_id, timeout)


def check_all() -> str:
    """The scheduler's job: check every name of every site.  Nothing is done (and the
    summary says why) until resolvers and at least one expected list are set."""
    try:
        servers = resolvers.configured()
    except ValueError as exc:
        raise ValueError(f"DNS_RESOLVERS is not a list of addresses: {exc}") from None
    if not servers:
        return ("no DNS resolvers are configured (Settings, Nameservers, or DNS_RESOLVERS): "
                "nothing checked")
    if expectations().empty:
        return ("no nameservers are expected (Settings, Nameservers, or per zone): "
                "nothing checked")
    counts = _check(None)
    total = sum(counts.values())
    sites = db.session.scalar(select(func.count(func.distinct(NameserverCheck.site_id))))
    return (f"{total} name(s) of {sites or 0} site(s) checked: {counts['ok']} ok, "
            f"{counts['mismatch']} mismatched, {counts['error']} could not be checked")


# --------------------------------------------------------------------------- #
# Showing                                                                     #
# --------------------------------------------------------------------------- #

@dataclass(frozen=True)
class SiteNameservers:
    """The site's last check, one row per name it has now, and when the check of it
    running now started (None: none runs)."""

    site: Site
    checks: list[NameserverCheck]
    running_since: datetime | None = None

    @property
    def status(self) -> str:
        """The worst of the names' statuses, ``unchecked`` before the first check."""
        present = {check.status for check in self.checks}
        return next((status.value for status in _SEVERITY if status in present), "unchecked")

    @property
    def checked_at(self) -> datetime | None:
        return min((as_utc(check.checked_at) for check in self.checks), default=None)


def site_nameservers(actor: User, site_id: int) -> SiteNameservers:
    """The last check of the site's names (another client's site is not found).
    Rows of names the site no longer has are left out."""
    site: Site = get_scoped(Site, site_id, actor, "site")
    order = {name: position for position, name in enumerate(site.server_names)}
    rows = db.session.scalars(select(NameserverCheck).where(
        NameserverCheck.site_id == site.id, NameserverCheck.hostname.in_(order)))
    return SiteNameservers(site, sorted(rows, key=lambda row: order[row.hostname]),
                           _running_since(site.id))


def check_to_dict(check: NameserverCheck) -> dict[str, Any]:
    return {"hostname": check.hostname, "zone": check.zone, "status": check.status.value,
            "expected": list(check.expected), "found": list(check.found),
            "error": check.error, "checked_at": as_utc(check.checked_at).isoformat()}


def nameservers_to_dict(result: SiteNameservers) -> dict[str, Any]:
    checked, running = result.checked_at, result.running_since
    return {"site_id": result.site.id, "status": result.status,
            "checked_at": checked.isoformat() if checked else None,
            "checking_since": running.isoformat() if running else None,
            "checks": [check_to_dict(check) for check in result.checks]}


@dataclass(frozen=True)
class Mismatches:
    """Sites with a name whose zone is served by other nameservers than expected."""

    total: int
    sites: list[tuple[Site, list[str]]]


def mismatched_sites(actor: User, limit: int = 10) -> Mismatches:
    """For the dashboard: how many sites have a mismatched name now, and the first
    ``limit`` of them (by domain) with those names."""
    require_admin(actor)
    current = and_(SiteHostname.site_id == NameserverCheck.site_id,
                   SiteHostname.name == NameserverCheck.hostname)
    mismatched = (select(NameserverCheck.site_id, NameserverCheck.hostname)
                  .join(SiteHostname, current)
                  .where(NameserverCheck.status == NameserverStatus.MISMATCH))
    total = db.session.scalar(select(func.count(func.distinct(mismatched.subquery().c.site_id))))
    sites = list(db.session.scalars(select(Site).where(
        Site.id.in_(select(mismatched.subquery().c.site_id))).order_by(Site.domain).limit(limit)))
    names: dict[int, list[str]] = {}
    for site_id, hostname in db.session.execute(
            mismatched.where(NameserverCheck.site_id.in_([site.id for site in sites]))
            .order_by(SiteHostname.position)):
        names.setdefault(site_id, []).append(hostname)
    return Mismatches(total or 0, [(site, names.get(site.id, [])) for site in sites])
