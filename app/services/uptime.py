"""Whether each site answers, from every node that serves it, and which certificate
each node actually serves.

The ``site_checks`` job asks each node's proxy for each site it carries, as a
visitor would, from the node itself: a request with the site's name as Host header
(and SNI over TLS) through a channel the node's pooled SSH connection forwards to
the proxy's port (:mod:`app.connector.http`).  A site is checked on a node when the
node is enabled, in the site's pool, and the version it last took carries the site:
anywhere else the proxy would answer with another server block, which would read as
"up".  Blocked sites serve the block page and are not checked.

**Up** means the proxy gave an HTTP answer below 500 (a redirect, a 404 or a 401 is
the site's own business).  A 5xx answer (502 when the backend is down), a refused
connection, a failed TLS handshake or no answer within ``SITE_CHECK_TIMEOUT`` seconds
is **down**.  A node the control plane cannot reach over SSH says nothing about the
site (its visitors do not come through the control plane): the check is recorded as
**not checked**, a row with ``checks`` 0 and the reason, which no uptime percentage
and no "site down" alert counts; the node's own health check and its "node
unreachable" alert tell the administrators.

Every result is one raw ``SiteCheck`` row (``period`` 0); the ``metrics_retention``
job rolls them into 5-minute and hourly sums and deletes old rows.  Readers take the
coarsest resolution a question allows (5-minute sums for a day, hourly ones for a
week or a month) and finer rows only after the last bucket of the coarser ones
(:func:`_spans`), so no check is counted twice, whenever the rollups run.

A sweep is bounded, whatever a tenant's backend does: one channel and one deadline
(``SITE_CHECK_TIMEOUT``) per check, ``SITE_CHECK_PARALLELISM`` threads at work, and
a check that waits longer than a second parked aside (its thread waits out the
deadline without counting as a worker), so a backend that accepts and stalls costs
its own checks their deadline and delays no other site's (up to eight parked checks
per thread at work; past that, stalled checks wait for a place, one deadline each
round).  Nodes take turns, each
starting its sites at another place in the list, so one site's checks are spread
over the sweep and over the nodes.  A node whose SSH connection fails is tried once:
until a node's connection is proven one of its checks runs at a time, and once it
failed its remaining checks are recorded as not checked, with the reason, without
another attempt.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from flask import current_app
from sqlalchemy import func, insert, select

from app.connector import (
    AuthenticationFailed,
    CommandTimeout,
    ConnectorError,
    HostKeyChanged,
    PortClosed,
    SSHConnectionPool,
    SSHTarget,
)
from app.connector.http import Answer, ExchangeFailed, request_status
from app.errors import ValidationError
from app.extensions import db, ssh
from app.models import (
    Certificate,
    ConfigVersion,
    DeploymentStatus,
    Node,
    NodeDeployment,
    Site,
    SiteCheck,
    SslMode,
    User,
)
from app.models.base import as_utc, utcnow
from app.services import deployments
from app.services.common import get_scoped

logger = logging.getLogger(__name__)

#: Answers from this status up are the site's failure (502, 503, 504...).
DOWN_FROM_STATUS = 500
#: Seconds after which a check still waiting is parked (see :class:`_Sweep`).
SLOW_AFTER = 1.0
#: Parked checks allowed per worker thread.
PARKED_PER_WORKER = 8
#: The windows uptime is given for, and each range's chart step (seconds).
WINDOWS: dict[str, timedelta] = {"24h": timedelta(hours=24), "7d": timedelta(days=7),
                                 "30d": timedelta(days=30)}
CHART_STEPS: dict[str, int] = {"24h": 300, "7d": 3600, "30d": 6 * 3600}
#: The coarsest rows each window's uptime is summed from.
WINDOW_STEPS: dict[str, int] = {"24h": 300, "7d": 3600, "30d": 3600}
_INSERT_BATCH = 1000


# --------------------------------------------------------------------------- #
# The sweep                                                                   #
# --------------------------------------------------------------------------- #

@dataclass(frozen=True)
class _Route:
    """How a node's proxy is reached: the node's SSH connection, then its listen
    address (or loopback) as the node itself sees it."""

    target: SSHTarget
    address: str
    http_port: int
    https_port: int


@dataclass(frozen=True)
class _Planned:
    site_id: int
    node_id: int
    domain: str
    tls: bool
    issued_sha256: str


@dataclass(frozen=True)
class _Outcome:
    site_id: int
    node_id: int
    at: datetime
    up: bool
    status_code: int | None = None
    response_ms: float | None = None
    error: str = ""
    cert_sha256: str | None = None
    cert_not_after: datetime | None = None
    cert_matches: bool | None = None
    # Set when the node's SSH connection failed: why, for its remaining checks.  The
    # site was then not checked through the node: the row counts no check.
    unreachable: str = ""

    def row(self) -> dict[str, Any]:
        checked = not self.unreachable
        return {"site_id": self.site_id, "node_id": self.node_id, "period": 0, "at": self.at,
                "checks": int(checked), "failures": int(checked and not self.up),
                "status_code": self.status_code, "response_ms": self.response_ms,
                "error": self.error[:200], "cert_sha256": self.cert_sha256,
                "cert_not_after": self.cert_not_after, "cert_matches": self.cert_matches}


def _unreachable_reason(exc: ConnectorError) -> str:
    """Why a node's SSH connection failed, without its address (clients read it)."""
    if isinstance(exc, AuthenticationFailed):
        return "the node refused the control plane's SSH credentials"
    if isinstance(exc, HostKeyChanged):
        return "the node's SSH host key changed; an administrator must accept the new key"
    return "the node could not be reached over SSH"


def _certificate_fields(der: bytes, issued_sha256: str
                        ) -> tuple[str, datetime | None, bool]:
    sha256 = hashlib.sha256(der).hexdigest()
    try:
        not_after: datetime | None = x509.load_der_x509_certificate(der).not_valid_after_utc
    except ValueError:
        not_after = None
    return sha256, not_after, sha256 == issued_sha256


class _Sweep:
    """Runs the planned checks; see the module's docstring for the order and the
    limits.  Touches no database.

    ``workers`` threads do the work.  A check still waiting for its answer after
    :data:`SLOW_AFTER` seconds is *parked*: its thread keeps waiting, up to the
    check's deadline, but no longer counts as a worker, and a new thread takes its
    place, so stalled answers never hold back the other checks.  At most
    :data:`PARKED_PER_WORKER` times ``workers`` checks are parked at once, and
    through one node at most ``workers`` checks are at work and ``workers`` parked
    (its proxy's connections are every tenant's).
    """

    def __init__(self, pool: SSHConnectionPool, routes: dict[int, _Route],
                 queues: dict[int, deque[_Planned]], *, timeout: float, workers: int) -> None:
        self.pool = pool
        self.routes = routes
        self.queues = queues
        self.timeout = timeout
        self.workers = max(1, workers)
        self.max_parked = PARKED_PER_WORKER * self.workers
        self.outcomes: list[_Outcome] = []
        self._cond = threading.Condition()
        self._order = list(queues)
        self._turn = 0
        self._queued = sum(len(q) for q in queues.values())
        self._threads = 0
        self._parked = 0
        self._in_flight: dict[int, int] = dict.fromkeys(queues, 0)
        self._parked_on: dict[int, int] = dict.fromkeys(queues, 0)
        self._connected: set[int] = set()
        self._broken: dict[int, str] = {}

    def run(self) -> list[_Outcome]:
        with self._cond:
            self._spawn(min(self.workers, self._queued))
            while self._threads:
                self._cond.wait()
        return self.outcomes

    @property
    def unreachable(self) -> int:
        return len(self._broken)

    def _spawn(self, count: int) -> None:
        for _ in range(count):
            self._threads += 1
            threading.Thread(target=self._work, name="rpcc-site-check", daemon=True).start()

    def _work(self) -> None:
        while (planned := self._take()) is not None:
            outcome, parked = self._run(planned)
            with self._cond:
                self._finish(planned, outcome, parked)

    def _run(self, planned: _Planned) -> tuple[_Outcome, bool]:
        """The check's outcome, and whether it was parked."""
        parked: list[bool] = []
        try:
            outcome = self._check(planned, lambda: parked.append(self._park(planned.node_id)))
        except Exception as exc:  # noqa: BLE001 - one check's bug must not stop the sweep
            logger.exception("site check of site %s on node %s failed", planned.site_id,
                             planned.node_id)
            outcome = _Outcome(planned.site_id, planned.node_id, utcnow(), up=False,
                               error=f"the check itself failed ({type(exc).__name__})")
        return outcome, any(parked)

    def _take(self) -> _Planned | None:
        """The next check for this thread, or None when the thread is no longer
        needed (nothing is left to start, or enough threads are working)."""
        with self._cond:
            while True:
                if self._threads - self._parked <= self.workers:
                    planned = self._pick()
                    if planned is not None:
                        return planned
                if self._queued == 0 or self._threads - self._parked > self.workers:
                    self._threads -= 1
                    self._cond.notify_all()
                    return None
                self._cond.wait()

    def _pick(self) -> _Planned | None:
        """The next check to run, nodes taking turns; an unreachable node's checks
        are recorded on the way, without a request."""
        count = len(self._order)
        for step in range(count):
            node_id = self._order[(self._turn + step) % count]
            queue = self.queues[node_id]
            while queue and node_id in self._broken:
                planned = queue.popleft()
                self._queued -= 1
                reason = self._broken[node_id]
                self.outcomes.append(_Outcome(planned.site_id, node_id, utcnow(), up=False,
                                              error=reason, unreachable=reason))
            # Until its SSH connection is proven, a node gets one check at a time: a
            # node out of reach costs one connection attempt, not one per thread.
            limit = self.workers if node_id in self._connected else 1
            if queue and self._in_flight[node_id] < limit:
                self._queued -= 1
                self._in_flight[node_id] += 1
                self._turn = (self._turn + step + 1) % count
                return queue.popleft()
        return None

    def _park(self, node_id: int) -> bool:
        """Whether a slow check may stop counting as a worker, and as one of its
        node's checks in flight (then another thread starts if work is left)."""
        with self._cond:
            if (self._parked >= self.max_parked
                    or self._parked_on[node_id] >= self.workers):
                return False
            self._parked += 1
            self._parked_on[node_id] += 1
            self._in_flight[node_id] -= 1
            if self._queued and self._threads - self._parked < self.workers:
                self._spawn(1)
            self._cond.notify_all()
            return True

    def _opened(self, node_id: int) -> None:
        with self._cond:
            if node_id not in self._connected:
                self._connected.add(node_id)
                self._cond.notify_all()

    def _finish(self, planned: _Planned, outcome: _Outcome, parked: bool) -> None:
        if parked:
            self._parked -= 1
            self._parked_on[planned.node_id] -= 1
        else:
            self._in_flight[planned.node_id] -= 1
        self.outcomes.append(outcome)
        if outcome.unreachable:
            self._broken.setdefault(planned.node_id, outcome.unreachable)
        self._cond.notify_all()

    def _check(self, planned: _Planned, on_slow: Callable[[], None]) -> _Outcome:
        route = self.routes[planned.node_id]
        at = utcnow()

        def fail(error: str, **learnt: Any) -> _Outcome:
            return _Outcome(planned.site_id, planned.node_id, at, up=False, error=error,
                            **learnt)

        body = request_status(planned.domain, tls=planned.tls, timeout=self.timeout,
                              on_open=lambda: self._opened(planned.node_id),
                              on_slow=on_slow, slow_after=SLOW_AFTER)
        try:
            answer: Answer = self.pool.tunnel(
                route.target, route.address,
                route.https_port if planned.tls else route.http_port, body, timeout=self.timeout)
        except PortClosed:
            self._opened(planned.node_id)
            return fail("the proxy refused the connection: is it running?")
        except CommandTimeout:
            return fail(f"no answer within {self.timeout:g} s")
        except ExchangeFailed as exc:
            return fail(str(exc))
        except ConnectorError as exc:
            reason = _unreachable_reason(exc)
            logger.warning("site checks through node %s: %s", planned.node_id, exc)
            return fail(reason, unreachable=reason)
        cert: dict[str, Any] = {}
        if answer.certificate is not None:
            sha256, not_after, matches = _certificate_fields(answer.certificate,
                                                             planned.issued_sha256)
            cert = {"cert_sha256": sha256, "cert_not_after": not_after, "cert_matches": matches}
        up = answer.status < DOWN_FROM_STATUS
        return _Outcome(planned.site_id, planned.node_id, at, up=up, status_code=answer.status,
                        response_ms=answer.elapsed_ms,
                        error="" if up else f"the proxy answered HTTP {answer.status}", **cert)


# --------------------------------------------------------------------------- #
# The job                                                                     #
# --------------------------------------------------------------------------- #

def _carried_sites(node_ids: list[int]) -> dict[int, set[int]]:
    """The sites each node's last successful version carries (what it serves)."""
    if not node_ids:
        return {}
    ranked = (
        select(NodeDeployment.node_id, ConfigVersion.site_versions,
               func.row_number().over(
                   partition_by=NodeDeployment.node_id,
                   order_by=(NodeDeployment.finished_at.desc(), NodeDeployment.id.desc()),
               ).label("rank"))
        .join(ConfigVersion, NodeDeployment.config_version_id == ConfigVersion.id)
        .where(NodeDeployment.status == DeploymentStatus.SUCCEEDED,
               NodeDeployment.node_id.in_(node_ids))
        .subquery())
    rows = db.session.execute(select(ranked.c.node_id, ranked.c.site_versions)
                              .where(ranked.c.rank == 1))
    return {node_id: {int(site_id) for site_id in (versions or {})} for node_id, versions in rows}


def _plan_sweep() -> tuple[dict[int, _Route], dict[int, deque[_Planned]]]:
    """Every (site, node) pair to check, per node, read in a few queries."""
    nodes = list(db.session.scalars(select(Node).where(Node.enabled.is_(True))
                                    .order_by(Node.pool_id, Node.name)))
    carried = _carried_sites([node.id for node in nodes])
    served_tls = (Site.ssl_mode != SslMode.NONE) & (func.coalesce(Certificate.chain_pem, "") != "")
    sites = db.session.execute(
        select(Site.id, Site.domain, Site.pool_id, served_tls.label("tls"),
               func.coalesce(Certificate.fingerprint_sha256, "").label("fingerprint"))
        .outerjoin(Certificate, Certificate.site_id == Site.id)
        .where(Site.blocked.is_(False), Site.pool_id.in_(sorted({n.pool_id for n in nodes})))
        .order_by(Site.id)).all()
    by_pool: dict[int, list[Any]] = defaultdict(list)
    for site in sites:
        by_pool[site.pool_id].append(site)
    pool_nodes: dict[int, list[Node]] = defaultdict(list)
    for node in nodes:
        pool_nodes[node.pool_id].append(node)
    routes: dict[int, _Route] = {}
    queues: dict[int, deque[_Planned]] = {}
    for pool_id, members in pool_nodes.items():
        pool_sites = by_pool.get(pool_id, [])
        for index, node in enumerate(members):
            mine = [s for s in pool_sites if s.id in carried.get(node.id, ())]
            if not mine:
                continue
            # Each node starts at another place in the list: one site's checks are
            # spread over the sweep instead of hitting every node at once.
            offset = index * len(mine) // len(members)
            queues[node.id] = deque(
                _Planned(s.id, node.id, s.domain, bool(s.tls), s.fingerprint)
                for s in mine[offset:] + mine[:offset])
            routes[node.id] = _Route(deployments.ssh_target(node),
                                     node.listen_address or "127.0.0.1",
                                     node.http_port, node.https_port)
    return routes, queues


def _record(outcomes: list[_Outcome]) -> None:
    """Insert the rows in batches, leaving out sites or nodes deleted meanwhile."""
    site_ids = {o.site_id for o in outcomes}
    node_ids = {o.node_id for o in outcomes}
    sites = set(db.session.scalars(select(Site.id).where(Site.id.in_(site_ids))))
    nodes = set(db.session.scalars(select(Node.id).where(Node.id.in_(node_ids))))
    rows = [o.row() for o in outcomes if o.site_id in sites and o.node_id in nodes]
    for start in range(0, len(rows), _INSERT_BATCH):
        db.session.execute(insert(SiteCheck), rows[start:start + _INSERT_BATCH])
    db.session.commit()


def check_sites() -> str:
    """The ``site_checks`` job: check every site through every node that serves it
    and record the results; returns a one-line summary."""
    routes, queues = _plan_sweep()
    # Nothing is held open in the database while the nodes answer.
    db.session.commit()
    if not queues:
        return "no deployed site to check"
    config = current_app.config
    sweep = _Sweep(ssh.pool(), routes, queues, timeout=float(config["SITE_CHECK_TIMEOUT"]),
                   workers=int(config["SITE_CHECK_PARALLELISM"]))
    outcomes = sweep.run()
    _record(outcomes)
    up = sum(1 for o in outcomes if o.up)
    unchecked = sum(1 for o in outcomes if o.unreachable)
    summary = (f"{len(outcomes)} check(s) of {len({o.site_id for o in outcomes})} site(s) "
               f"through {len(queues)} node(s): {up} up, {len(outcomes) - up - unchecked} down")
    if sweep.unreachable:
        summary += (f"; {unchecked} not checked: {sweep.unreachable} node(s) not reachable "
                    "over SSH")
    return summary


# --------------------------------------------------------------------------- #
# Reading                                                                     #
# --------------------------------------------------------------------------- #

def _ends(site_id: int) -> dict[int, datetime]:
    """Where the site's rows of each resolution end (the last bucket's end)."""
    return {period: as_utc(last) + timedelta(seconds=period)
            for period, last in db.session.execute(
                select(SiteCheck.period, func.max(SiteCheck.at))
                .where(SiteCheck.site_id == site_id).group_by(SiteCheck.period))}


def _spans(ends: dict[int, datetime], coarsest: int) -> list[tuple[int, datetime | None]]:
    """The resolutions to read, coarsest first (up to ``coarsest`` seconds), each
    with the instant it is read from: a finer one only after the last bucket of the
    coarser ones, so a check rolled up already is never counted again, whenever the
    rollups ran."""
    spans: list[tuple[int, datetime | None]] = []
    start: datetime | None = None
    for period in sorted((p for p in ends if p <= coarsest), reverse=True):
        spans.append((period, start))
        start = ends[period] if start is None else max(start, ends[period])
    return spans


def _windows(site_id: int, now: datetime) -> list[dict[str, Any]]:
    """Checks and failures over each window.  A bucket that began before the window
    is left out, so a window starts at most one bucket late (:data:`WINDOW_STEPS`)."""
    ends = _ends(site_id)
    result = []
    for name, span in WINDOWS.items():
        since = now - span
        checks = failures = 0
        for period, start in _spans(ends, WINDOW_STEPS[name]):
            row = db.session.execute(
                select(func.sum(SiteCheck.checks), func.sum(SiteCheck.failures))
                .where(SiteCheck.site_id == site_id, SiteCheck.period == period,
                       SiteCheck.at >= max(since, start or since))).one()
            checks += int(row[0] or 0)
            failures += int(row[1] or 0)
        result.append({"window": name, "checks": checks, "failures": failures,
                       "percent": (round(100 * (checks - failures) / checks, 3)
                                   if checks else None)})
    return result


def _history(site_id: int, range_: str, now: datetime) -> dict[str, Any]:
    """Uptime and average response time per step of the range (None: no check)."""
    step = CHART_STEPS[range_]
    epoch = datetime(1970, 1, 1, tzinfo=now.tzinfo)
    first = now - WINDOWS[range_]
    first -= timedelta(seconds=(first - epoch).total_seconds() % step)
    count = int((now - first).total_seconds() // step) + 1
    checks, failures = [0] * count, [0] * count
    timed, weights = [0.0] * count, [0] * count
    for period, start in _spans(_ends(site_id), step):
        rows = db.session.execute(
            select(SiteCheck.at, SiteCheck.checks, SiteCheck.failures, SiteCheck.response_ms)
            .where(SiteCheck.site_id == site_id, SiteCheck.period == period,
                   SiteCheck.at >= max(first, start or first)))
        for at, n, failed, response_ms in rows:
            index = min(count - 1, int((as_utc(at) - first).total_seconds() // step))
            checks[index] += n
            failures[index] += failed
            if response_ms is not None:
                # A rollup's average stands for its checks.
                timed[index] += response_ms * n
                weights[index] += n
    return {"range": range_, "step_seconds": step, "points": [
        {"at": first + timedelta(seconds=i * step), "checks": checks[i],
         "uptime_percent": (round(100 * (checks[i] - failures[i]) / checks[i], 3)
                            if checks[i] else None),
         "response_ms": round(timed[i] / weights[i], 1) if weights[i] else None}
        for i in range(count)]}


def _latest(site: Site, admin: bool) -> list[dict[str, Any]]:
    """The last check through each enabled node of the site's pool: ``up``,
    ``down``, ``unreachable`` (the node could not be reached over SSH, so the site was
    not checked through it) or ``unchecked`` (never).  Clients read "node 1 of 3",
    never the fleet's node names (DESIGN: tenancy)."""
    latest_ids = (select(func.max(SiteCheck.id))
                  .where(SiteCheck.site_id == site.id, SiteCheck.period == 0)
                  .group_by(SiteCheck.node_id))
    last = {row.node_id: row for row in db.session.scalars(
        select(SiteCheck).where(SiteCheck.id.in_(latest_ids)))}
    members = db.session.execute(select(Node.id, Node.name).where(
        Node.pool_id == site.pool_id, Node.enabled.is_(True)).order_by(Node.name)).all()
    result = []
    for index, (node_id, name) in enumerate(members, 1):
        row = last.get(node_id)
        result.append({
            "node": name if admin else f"node {index} of {len(members)}",
            "node_id": node_id if admin else None,
            "status": _status(row),
            "checked_at": as_utc(row.at) if row else None,
            "status_code": row.status_code if row else None,
            "response_ms": row.response_ms if row else None,
            "error": row.error if row else "",
            "cert_sha256": row.cert_sha256 if row else None,
            "cert_not_after": (as_utc(row.cert_not_after)
                               if row and row.cert_not_after else None),
            "cert_matches": row.cert_matches if row else None,
        })
    return result


def _status(row: SiteCheck | None) -> str:
    if row is None:
        return "unchecked"
    if not row.checks:
        return "unreachable"
    return "down" if row.failures else "up"


def check_range(value: str | None) -> str:
    """The chart's range (``24h`` when not given).

    :raises ValidationError: on ``range`` when it is none of :data:`WINDOWS`.
    """
    if value in (None, ""):
        return "24h"
    if value not in WINDOWS:
        raise ValidationError("invalid range", {"range": f"must be one of {', '.join(WINDOWS)}"})
    return str(value)


def site_uptime(actor: User, site_id: int, range_: str | None = None, *,
                now: datetime | None = None) -> dict[str, Any]:
    """A site's uptime over 24 hours, 7 and 30 days, the last check through each
    node of its pool, and the points of one range's charts.

    :raises NotFound: when the site is not the actor's (another client's too).
    :raises ValidationError: on ``range`` (see :func:`check_range`).
    """
    site: Site = get_scoped(Site, site_id, actor, "site")
    chosen = check_range(range_)
    now = now or utcnow()
    return {"site_id": site.id, "windows": _windows(site.id, now),
            "nodes": _latest(site, actor.is_admin), "history": _history(site.id, chosen, now)}

