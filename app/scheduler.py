"""Background jobs: one scheduler thread per app process, one leader per deployment.

Every gunicorn worker of every app instance runs a scheduler thread; only the one
holding the database lease runs jobs, so a job never runs twice at once however many
processes serve the app.  On PostgreSQL the lease is a session-level advisory lock on
a connection of its own: it ends when that connection or the process dies.  SQLite has
no such lock, so there the lease is a row taken and renewed by conditional UPDATEs with
an expiry.  On both, the leader writes a heartbeat into that row, which ``/health`` and
the Jobs page show.

When a job is due comes from the JobRun rows (the last start of each job), so a new
leader carries on its predecessor's schedule.  The thread sleeps on an event until the
next job is due or the lease needs renewing (no polling), runs one job at a time in a
worker thread while it keeps renewing the lease, and on shutdown lets the running job
finish, then gives the lease back.

Adding a job is one entry in ``JOBS``: a name, a function of no arguments that returns
a one-line summary (run inside an app context), and a default interval that
``JOB_INTERVAL_<NAME>`` overrides.
"""

from __future__ import annotations

import atexit
import logging
import threading
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from flask import Flask
from sqlalchemy import URL, Connection, Engine, create_engine, insert, or_, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import NullPool

from app.extensions import db
from app.models import SchedulerLease
from app.models.base import utcnow
from app.services import certificates
from app.services import jobs as job_service

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    name: str
    work: Callable[[], str]
    every: float  # seconds between starts unless JOB_INTERVAL_<NAME> says otherwise

    def interval(self, app: Flask) -> float:
        """Seconds between starts; 0 or less turns the job off."""
        return float(app.config["JOB_INTERVALS"].get(self.name, self.every))


JOBS: tuple[Job, ...] = (
    Job("node_health", job_service.check_node_health, every=300),
    Job("drift", job_service.check_drift, every=3600),
    Job("job_retention", job_service.purge_job_runs, every=86400),
    Job("certificates", certificates.renew_due, every=3600),
)


def find_job(name: str, registry: Iterable[Job] = JOBS) -> Job | None:
    return next((job for job in registry if job.name == name), None)


# --------------------------------------------------------------------------- #
# Leases                                                                      #
# --------------------------------------------------------------------------- #

class Lease(Protocol):
    def hold(self) -> bool:
        """Take the lease or keep it, and write the heartbeat; whether we lead now."""

    def release(self) -> None:
        """Give the lease back so that another process takes over at once."""


def _write_lease_row(holder: str, ttl: float) -> bool:
    """Take the lease row if it is ours or has expired; a missing row is created.
    One conditional UPDATE, so two processes can never both succeed."""
    now = utcnow()
    values = {"holder": holder, "expires_at": now + timedelta(seconds=ttl), "heartbeat_at": now}
    with db.engine.begin() as conn:
        result = conn.execute(update(SchedulerLease).where(
            SchedulerLease.name == job_service.LEASE_NAME,
            or_(SchedulerLease.holder == holder, SchedulerLease.expires_at < now),
        ).values(**values))
        if result.rowcount == 1:
            return True
    try:
        with db.engine.begin() as conn:
            conn.execute(insert(SchedulerLease).values(name=job_service.LEASE_NAME, **values))
        return True
    except IntegrityError:
        return False  # the row exists and someone else's lease on it still runs


def _expire_lease_row(holder: str) -> None:
    with db.engine.begin() as conn:
        conn.execute(update(SchedulerLease).where(
            SchedulerLease.name == job_service.LEASE_NAME, SchedulerLease.holder == holder,
        ).values(expires_at=utcnow()))


class RowLease:
    """The lease as a row with an expiry: a crashed holder stops renewing and loses
    it ``ttl`` seconds after its last renewal."""

    def __init__(self, holder: str, ttl: float) -> None:
        self.holder, self.ttl = holder, ttl

    def hold(self) -> bool:
        return _write_lease_row(self.holder, self.ttl)

    def release(self) -> None:
        _expire_lease_row(self.holder)


# Advisory lock keys are two int4: one for this product, one for the lease's name.
_LOCK_NAMESPACE = 0x52504343  # "RPCC"
_LOCK_KEY = zlib.crc32(job_service.LEASE_NAME.encode()) & 0x7FFFFFFF


class AdvisoryLease:
    """A PostgreSQL session-level advisory lock held on a dedicated connection.

    The server releases it when that connection ends, whether the process exits,
    crashes or loses the network; we notice at the next renewal (the lock is no
    longer ours) and stop running jobs until we win it again.  The lease row then only
    carries the heartbeat, written by whoever holds the lock."""

    def __init__(self, holder: str, ttl: float, url: URL) -> None:
        self.holder, self.ttl, self.url = holder, ttl, url
        self._engine: Engine | None = None
        self._conn: Connection | None = None

    def _connect(self) -> Connection:
        if self._engine is None:
            # Keepalives end a connection to a vanished server instead of leaving
            # the lock query hanging.
            self._engine = create_engine(
                self.url, poolclass=NullPool, isolation_level="AUTOCOMMIT",
                connect_args={"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 10,
                              "keepalives_interval": 5, "keepalives_count": 3,
                              "application_name": "rpcc-scheduler"})
        return self._engine.connect()

    def _still_ours(self) -> bool:
        """Ask the server rather than trusting the connection object, which may have
        quietly reconnected (a new session holds no lock)."""
        assert self._conn is not None
        try:
            return bool(self._conn.execute(text(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
                "AND granted AND pid = pg_backend_pid() AND classid = :ns "
                "AND objid = :key AND objsubid = 2)"),
                {"ns": _LOCK_NAMESPACE, "key": _LOCK_KEY}).scalar())
        except Exception:  # noqa: BLE001 - any failure means the session is gone
            log.warning("scheduler lock connection failed", exc_info=True)
            return False

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - it is being thrown away
                log.debug("closing the scheduler lock connection failed", exc_info=True)
            self._conn = None

    def hold(self) -> bool:
        if self._conn is not None and not self._still_ours():
            log.warning("scheduler lock lost: %s no longer leads", self.holder)
            self._drop()
        if self._conn is None:
            conn = self._connect()
            try:
                taken = conn.execute(text("SELECT pg_try_advisory_lock(:ns, :key)"),
                                     {"ns": _LOCK_NAMESPACE, "key": _LOCK_KEY}).scalar()
            except Exception:
                conn.close()
                raise
            if not taken:
                conn.close()
                return False
            self._conn = conn
        # The lock decides; the row only reports, so it is overwritten unconditionally.
        with db.engine.begin() as conn:
            result = conn.execute(update(SchedulerLease).where(
                SchedulerLease.name == job_service.LEASE_NAME).values(
                holder=self.holder, heartbeat_at=utcnow(),
                expires_at=utcnow() + timedelta(seconds=self.ttl)))
        if result.rowcount == 0:
            _write_lease_row(self.holder, self.ttl)
        return True

    def release(self) -> None:
        if self._conn is None:
            return
        try:
            _expire_lease_row(self.holder)
            self._conn.execute(text("SELECT pg_advisory_unlock(:ns, :key)"),
                               {"ns": _LOCK_NAMESPACE, "key": _LOCK_KEY})
        finally:
            self._drop()
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None


def make_lease(app: Flask, holder: str) -> Lease:
    with app.app_context():
        engine = db.engine
        ttl = app.config["SCHEDULER_LEASE_TTL"]
        if engine.dialect.name == "postgresql":
            return AdvisoryLease(holder, ttl, engine.url)
        return RowLease(holder, ttl)


# --------------------------------------------------------------------------- #
# The scheduler                                                               #
# --------------------------------------------------------------------------- #

class Scheduler:
    """Leads or waits to lead, and runs due jobs while it leads.  ``step`` is one
    round; ``start`` runs rounds in a thread until ``stop``."""

    def __init__(self, app: Flask, jobs: Iterable[Job] = JOBS, *, lease: Lease | None = None,
                 runner: str | None = None) -> None:
        self.app = app
        self.jobs = tuple(jobs)
        self.runner = runner or job_service.runner_id()
        self.heartbeat = float(app.config["SCHEDULER_HEARTBEAT"])
        ttl = float(app.config["SCHEDULER_LEASE_TTL"])
        if ttl < 2 * self.heartbeat:
            raise ValueError("SCHEDULER_LEASE_TTL must be at least twice SCHEDULER_HEARTBEAT, "
                             "or the lease expires between renewals")
        self.lease = lease or make_lease(app, self.runner)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._leading = False
        self._lease_lock = threading.Lock()

    @property
    def is_leader(self) -> bool:
        return self._leading

    def _hold(self) -> bool:
        """Take or renew the lease; any failure counts as not leading, so a process
        that cannot reach the database stops running jobs."""
        with self._lease_lock, self.app.app_context():
            try:
                leading = self.lease.hold()
            except Exception:  # noqa: BLE001 - logged; we simply do not lead this round
                log.exception("scheduler %s could not reach its lease", self.runner)
                leading = False
            if leading and not self._leading:
                log.info("scheduler %s now runs the jobs", self.runner)
                closed = job_service.close_interrupted(self.runner)
                if closed:
                    log.warning("%d job run(s) of a previous leader marked interrupted", closed)
            elif self._leading and not leading:
                log.warning("scheduler %s lost the lease and stops running jobs", self.runner)
            self._leading = leading
            return leading

    def _due(self) -> tuple[list[Job], float]:
        """The due jobs, most overdue first, and the seconds until the next one."""
        enabled = [job for job in self.jobs if job.interval(self.app) > 0]
        with self.app.app_context():
            last = job_service.last_starts([job.name for job in enabled])
        now = utcnow()
        due: list[tuple[float, Job]] = []
        wait = self.heartbeat
        for job in enabled:
            started = last.get(job.name)
            remaining = (job.interval(self.app) - (now - started).total_seconds()
                         if started else float("-inf"))
            if remaining <= 0:
                due.append((remaining, job))
            else:
                wait = min(wait, remaining)
        return [job for _, job in sorted(due, key=lambda pair: pair[0])], wait

    def _run(self, job: Job) -> bool:
        """Run ``job`` in a worker thread, renewing the lease meanwhile.  Whether we
        still lead when it ends."""
        done = threading.Event()

        def work() -> None:
            try:
                with self.app.app_context():
                    job_service.run_recorded(job.name, job.work, self.runner)
            except Exception:  # noqa: BLE001 - the run could not even be recorded
                log.exception("job %s could not be recorded", job.name)
            finally:
                done.set()

        threading.Thread(target=work, name=f"rpcc-job-{job.name}", daemon=True).start()
        while not done.wait(self.heartbeat):
            if not self._hold():
                # The job cannot be interrupted: wait for it, and start nothing else.
                done.wait()
                return False
        return True

    def step(self) -> float:
        """One round: take or keep the lease and, while leading, run every due job.

        :returns: seconds to sleep before the next round.
        """
        if not self._hold():
            return self.heartbeat
        due, wait = self._due()
        if not due:
            return wait
        for job in due:
            if self._stop.is_set() or not self._run(job):
                break
        return 0.0

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    delay = self.step()
                except Exception:  # noqa: BLE001 - the thread must outlive any round
                    log.exception("scheduler round failed")
                    delay = self.heartbeat
                self._stop.wait(delay)
        finally:
            self.release()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="rpcc-scheduler", daemon=True)
        self._thread.start()
        atexit.register(self.stop)
        log.info("scheduler %s started (%s)", self.runner, ", ".join(
            f"{job.name} every {job.interval(self.app):g}s" for job in self.jobs
            if job.interval(self.app) > 0) or "no jobs")

    def release(self) -> None:
        """Give the lease back (nothing happens if we do not hold it)."""
        with self._lease_lock, self.app.app_context():
            try:
                self.lease.release()
            except Exception:  # noqa: BLE001 - it then expires or dies with the connection
                log.exception("scheduler %s could not release its lease", self.runner)
            self._leading = False

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the running job (waiting at most ``timeout`` seconds, by default
        SCHEDULER_STOP_TIMEOUT) and give the lease back.  A job still running then is
        abandoned with the process; its lease ends with it."""
        self._stop.set()
        if self._thread is None:
            self.release()
            return
        self._thread.join(self.app.config["SCHEDULER_STOP_TIMEOUT"] if timeout is None
                          else timeout)
        if self._thread.is_alive():
            log.warning("scheduler %s: a job is still running at shutdown", self.runner)


_START_LOCK = threading.Lock()


def start_scheduler(app: Flask) -> Scheduler | None:
    """Start this process's scheduler (at most one), unless SCHEDULER_ENABLED is off
    or the app is under test.  gunicorn calls this in each worker once the app is
    loaded (gunicorn.conf.py), so CLI commands and tests never start it."""
    if app.testing or not app.config["SCHEDULER_ENABLED"]:
        return None
    with _START_LOCK:
        scheduler: Scheduler | None = app.extensions.get("rpcc_scheduler")
        if scheduler is None:
            scheduler = Scheduler(app)
            app.extensions["rpcc_scheduler"] = scheduler
            scheduler.start()
    return scheduler


def stop_scheduler(app: Flask) -> None:
    scheduler: Scheduler | None = app.extensions.get("rpcc_scheduler")
    if scheduler is not None:
        scheduler.stop()
