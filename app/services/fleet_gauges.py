"""The state of the fleet as /metrics reports it, read from the database when
Prometheus scrapes: a handful of grouped queries, whose answer is bounded by the
number of nodes, pools, severities and jobs, never by sites or by history.

Nothing here names a tenant: certificates are counted per pool, never listed by
domain, since a scrape is often anonymous and a client's names are their own."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import case, func, select

from app.extensions import db
from app.models import (
    Alert,
    AlertRule,
    AlertSeverity,
    AlertState,
    Certificate,
    JobRun,
    Node,
    Pool,
    Site,
    SslMode,
)
from app.models.base import as_utc, utcnow
from app.scheduler import JOBS

#: The windows certificates are counted in (days until they end, 0: already
#: ended); 30 is when renewal starts by default (CERT_RENEW_BEFORE_DAYS).
EXPIRY_WINDOWS_DAYS = (0, 7, 14, 30, 60, 90)
#: How far back job runs are counted per status.
RECENT_RUNS = timedelta(days=1)


@dataclass(frozen=True)
class NodeState:
    pool: str
    name: str
    #: The node's status, or "disabled" for a node taken out of service.
    status: str


@dataclass(frozen=True)
class PoolCertificates:
    """Certificates served by one pool's sites."""

    total: int
    #: {days: certificates ending within that many days} for EXPIRY_WINDOWS_DAYS.
    ending_within: dict[int, int]
    #: Days until the soonest ends (negative once it has).
    soonest_days: float


@dataclass(frozen=True)
class JobState:
    #: Seconds between runs as configured now; None when the job is off or unknown.
    interval_seconds: float | None
    #: Seconds since the last run started; None when it never ran (or was purged).
    last_start_age_seconds: float | None
    #: Runs started within RECENT_RUNS, per status.
    recent_runs: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class FleetGauges:
    nodes: list[NodeState]
    certificates: dict[str, PoolCertificates]
    #: Firing alerts per severity, every severity present.
    alerts_firing: dict[str, int]
    jobs: dict[str, JobState]


def read_fleet_gauges(now: datetime | None = None) -> FleetGauges:
    """Everything the scrape-time gauges report, in four queries (and one more when
    a scheduled job has not started for a day)."""
    now = now or utcnow()
    return FleetGauges(nodes=_nodes(), certificates=_certificates(now),
                       alerts_firing=_alerts_firing(), jobs=_jobs(now))


def _nodes() -> list[NodeState]:
    rows = db.session.execute(
        select(Pool.name, Node.name, Node.status, Node.enabled)
        .join(Pool, Pool.id == Node.pool_id).order_by(Pool.name, Node.name))
    return [NodeState(pool, name, str(status) if enabled else "disabled")
            for pool, name, status, enabled in rows]


def _certificates(now: datetime) -> dict[str, PoolCertificates]:
    """Served certificates (the site asks for TLS and one was obtained) per pool,
    counted in each window by the database."""
    ends = Certificate.not_after
    windows = [func.sum(case((ends <= now + timedelta(days=days), 1), else_=0))
               for days in EXPIRY_WINDOWS_DAYS]
    rows = db.session.execute(
        select(Pool.name, func.count(), func.min(ends), *windows)
        .select_from(Certificate).join(Site, Site.id == Certificate.site_id)
        .join(Pool, Pool.id == Site.pool_id)
        .where(ends.is_not(None), Site.ssl_mode != SslMode.NONE)
        .group_by(Pool.name))
    found: dict[str, PoolCertificates] = {}
    for pool, total, soonest, *within in rows:
        found[pool] = PoolCertificates(
            total=int(total),
            ending_within={days: int(count or 0)
                           for days, count in zip(EXPIRY_WINDOWS_DAYS, within, strict=True)},
            soonest_days=round((as_utc(soonest) - now).total_seconds() / 86400, 3))
    return found


def _alerts_firing() -> dict[str, int]:
    counts = {str(severity): 0 for severity in AlertSeverity}
    rows = db.session.execute(
        select(AlertRule.severity, func.count()).select_from(Alert)
        .join(AlertRule, AlertRule.id == Alert.rule_id)
        .where(Alert.state == AlertState.FIRING).group_by(AlertRule.severity))
    for severity, count in rows:
        counts[str(severity)] = int(count)
    return counts


def _jobs(now: datetime) -> dict[str, JobState]:
    """The scheduler's jobs and any other job that ran lately (one run by hand, or
    one a newer version no longer has).  Runs are read through the index on their
    start, over the last day only: the cost follows the day's runs, not the
    retained history (the scheduled jobs that have not started for a day are looked
    up by name, in one more query)."""
    since = now - RECENT_RUNS
    intervals = {job.name: job.interval(current_app) for job in JOBS}
    runs: dict[str, dict[str, int]] = {}
    last_start: dict[str, datetime] = {}
    # Grouped by an expression of the name, not the bare column: SQLite, without
    # statistics, would otherwise walk the index on names (to group without
    # sorting) through the whole history rather than the index on starts.
    name = (JobRun.job + "").label("job")
    for job, status, count, latest in db.session.execute(
            select(name, JobRun.status, func.count(), func.max(JobRun.started_at))
            .where(JobRun.started_at >= since).group_by(name, JobRun.status)):
        runs.setdefault(job, {})[str(status)] = int(count)
        last_start[job] = max(as_utc(latest), last_start.get(job, as_utc(latest)))
    if missing := sorted(intervals.keys() - last_start.keys()):
        # Through the index on names (the grouping expression keeps a planner from
        # walking the index on starts back through the history for a name that
        # never ran).
        last_start.update((job, as_utc(latest)) for job, latest in db.session.execute(
            select(name, func.max(JobRun.started_at)).where(JobRun.job.in_(missing))
            .group_by(name)))
    return {
        name: JobState(
            interval_seconds=intervals[name] if intervals.get(name, 0) > 0 else None,
            last_start_age_seconds=(round((now - last_start[name]).total_seconds(), 3)
                                    if name in last_start else None),
            recent_runs=runs.get(name, {}))
        for name in sorted(intervals.keys() | last_start.keys())
    }
