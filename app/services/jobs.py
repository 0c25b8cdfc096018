"""Background jobs: the work each one does, the record of every run, and what the
Jobs page and ``/health`` show.  The scheduler (``app/scheduler.py``) decides when and
where a job runs; everything here also works run by hand (``flask jobs run NAME``)."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from flask import Flask, current_app
from sqlalchemy import CursorResult, delete, func, select

from app.errors import ValidationError
from app.extensions import db
from app.models import JobRun, JobStatus, Node, Role, SchedulerLease, User
from app.models.base import as_utc, utcnow
from app.services import deployments, node_actions
from app.services.common import Page, paginate, require_admin
from app.services.node_leases import LeaseTimeout, node_lease

log = logging.getLogger(__name__)

LEASE_NAME = "scheduler"
# JobRun.detail is free text; a runaway error message must not bloat the table.
DETAIL_LIMIT = 4000
CLI_RUNNER = "cli"


def runner_id(kind: str = "") -> str:
    """Names a process in JobRun rows and the lease: host and PID say where to look,
    the random part tells a restarted process with a reused PID apart."""
    suffix = f"{kind}-{uuid.uuid4().hex[:8]}" if kind else uuid.uuid4().hex[:8]
    return f"{socket.gethostname()}:{os.getpid()}:{suffix}"[:128]


# --------------------------------------------------------------------------- #
# Recording runs                                                              #
# --------------------------------------------------------------------------- #

def run_recorded(name: str, work: Callable[[], str], runner: str) -> JobRun:
    """Run ``work`` once and record it as a JobRun: ``running`` first (so a run that
    never ends is visible), then ``succeeded`` with the summary ``work`` returns, or
    ``failed`` with the error.  An exception never escapes: the caller carries on with
    its next job.  Needs an app context."""
    run = JobRun(job=name, runner=runner, status=JobStatus.RUNNING, started_at=utcnow())
    db.session.add(run)
    db.session.commit()
    run_id = run.id
    try:
        detail, status = work(), JobStatus.SUCCEEDED
    except Exception as exc:  # noqa: BLE001 - a job's failure is data, not a crash
        log.exception("job %s failed", name)
        db.session.rollback()
        detail, status = f"{type(exc).__name__}: {exc}", JobStatus.FAILED
    run = db.session.get(JobRun, run_id) or run
    run.status, run.finished_at = status, utcnow()
    run.detail = (detail or "")[:DETAIL_LIMIT]
    db.session.commit()
    return run


def last_starts(names: list[str]) -> dict[str, datetime]:
    """When each job last started, whichever process ran it: a new leader carries on
    the previous one's schedule instead of running everything at once."""
    rows = db.session.execute(select(JobRun.job, func.max(JobRun.started_at))
                              .where(JobRun.job.in_(names)).group_by(JobRun.job))
    return {job: as_utc(started) for job, started in rows if started is not None}


def close_interrupted(runner: str) -> int:
    """Runs left ``running`` by another scheduler can never finish: it stopped or lost
    the lease (only the lease holder runs jobs, and ``runner`` holds it now).  Runs
    started by hand (``jobs run``) need no lease and are left alone."""
    runs = db.session.scalars(select(JobRun).where(
        JobRun.status == JobStatus.RUNNING, JobRun.runner != runner,
        JobRun.runner.not_like(f"%:{CLI_RUNNER}-%"))).all()
    for run in runs:
        run.status, run.finished_at = JobStatus.FAILED, utcnow()
        run.detail = "interrupted: its process stopped or lost the scheduler lease"
    db.session.commit()
    return len(runs)


# --------------------------------------------------------------------------- #
# The jobs                                                                    #
# --------------------------------------------------------------------------- #

def _scheduler_actor() -> User:
    """Node checks are an administrator's action; scheduled ones act as this account,
    which is never stored (audit entries name "scheduler" and no user)."""
    return User(username="scheduler", email="", role=Role.ADMIN, is_active=True)


def _check_one(app: Flask, node_id: int) -> bool:
    """One node, in a worker thread with its own app context and session."""
    with app.app_context():
        try:
            node = node_actions.check_node(_scheduler_actor(), node_id)
            return all(part["ok"] for part in (node.last_check or {}).values())
        finally:
            db.session.remove()


def check_node_health() -> str:
    """Check every enabled node (SSH, proxy process, HTTP) as the node page's "Check"
    button does, a few at once, so that node status stays current without anyone
    pressing it.  Unreachable nodes are results, not failures; the run fails only if
    a check itself breaks."""
    node_ids = list(db.session.scalars(select(Node.id).where(Node.enabled.is_(True))
                                       .order_by(Node.id)))
    if not node_ids:
        return "no enabled nodes"
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    workers = max(1, min(app.config["NODE_CHECK_PARALLELISM"], len(node_ids)))
    healthy, errors = 0, []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rpcc-node-check") as pool:
        futures = {node_id: pool.submit(_check_one, app, node_id) for node_id in node_ids}
        for node_id, future in futures.items():
            try:
                healthy += future.result()
            except Exception as exc:  # noqa: BLE001 - reported below, others carry on
                log.exception("health check of node %s failed", node_id)
                errors.append(f"node {node_id}: {type(exc).__name__}: {exc}")
    summary = f"{len(node_ids)} node(s) checked: {healthy} healthy, " \
              f"{len(node_ids) - healthy - len(errors)} not"
    if errors:
        raise RuntimeError(f"{summary}; {len(errors)} check(s) broke: {'; '.join(errors)}")
    return summary


def check_drift() -> str:
    """Compare each deployed, enabled node's files with its last version.  A node in
    the middle of a deployment is skipped this round (its files are legitimately
    changing), which is why the check takes the node's deployment lease."""
    stmt = select(Node.id).where(Node.enabled.is_(True)).order_by(Node.id)
    node_ids = [i for i in db.session.scalars(stmt) if deployments.current_version(i)]
    ttl = current_app.config["DEPLOY_LOCK_TTL"]
    drifted, busy = [], 0
    for node_id in node_ids:
        try:
            with node_lease(node_id, ttl=ttl, wait=0):
                node = deployments.check_drift(None, node_id)
        except LeaseTimeout:
            busy += 1
            continue
        if node.drifted:
            drifted.append(node.name)
    summary = f"{len(node_ids)} deployed node(s) compared: {len(drifted)} drifted"
    if drifted:
        summary += f" ({', '.join(drifted[:20])})"
    return summary + (f"; {busy} skipped (deploying)" if busy else "")


def purge_job_runs() -> str:
    """Forget finished runs older than JOB_RUN_RETENTION_DAYS."""
    days = current_app.config["JOB_RUN_RETENTION_DAYS"]
    cutoff = utcnow() - timedelta(days=days)
    result = cast(CursorResult[Any], db.session.execute(
        delete(JobRun).where(JobRun.started_at < cutoff, JobRun.status != JobStatus.RUNNING)
        .execution_options(synchronize_session=False)))
    db.session.commit()
    return f"deleted {result.rowcount} run(s) older than {days:g} day(s)"


# --------------------------------------------------------------------------- #
# What administrators see                                                     #
# --------------------------------------------------------------------------- #

@dataclass(frozen=True)
class SchedulerState:
    leader: str | None
    heartbeat_at: datetime | None
    heartbeat_age_seconds: float | None


def scheduler_state() -> SchedulerState:
    """Who leads (the lease holder while its lease lasts; nobody once it has
    expired or been given back) and how old the last heartbeat is."""
    lease = db.session.get(SchedulerLease, LEASE_NAME)
    if lease is None:
        return SchedulerState(None, None, None)
    now = utcnow()
    heartbeat = as_utc(lease.heartbeat_at)
    leader = lease.holder if as_utc(lease.expires_at) > now else None
    return SchedulerState(leader, heartbeat, round((now - heartbeat).total_seconds(), 3))


def list_runs(actor: User, *, page: int = 1, per_page: int = 50, job: str | None = None,
              status: str | None = None) -> Page[JobRun]:
    require_admin(actor)
    stmt = select(JobRun).order_by(JobRun.started_at.desc(), JobRun.id.desc())
    if job:
        stmt = stmt.where(JobRun.job == job)
    if status:
        try:
            stmt = stmt.where(JobRun.status == JobStatus(status))
        except ValueError:
            raise ValidationError("unknown status", {"status": "unknown status"}) from None
    return paginate(stmt, page, per_page)


def latest_runs(actor: User, names: list[str]) -> dict[str, JobRun]:
    """Each job's most recent run (one query), for the schedule on the Jobs page."""
    require_admin(actor)
    newest = (select(JobRun.job, func.max(JobRun.id).label("id"))
              .where(JobRun.job.in_(names)).group_by(JobRun.job).subquery())
    runs = db.session.scalars(select(JobRun).join(newest, JobRun.id == newest.c.id))
    return {run.job: run for run in runs}
