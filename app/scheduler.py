"""Background jobs: one scheduler thread per app process, one leader per deployment.

Every gunicorn worker of every app instance runs a scheduler thread; only the one
holding the database lease (``app.services.scheduler_lease``) runs jobs, so a job
never runs twice at once however many processes serve the app.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from flask import Flask

from app.executor import background, distributed, executor
from app.models.base import utcnow
from app.services import (
    alerts,
    backup,
    certificates,
    deployments,
    monitoring,
    nameservers,
    uptime,
)
from app.services import jobs as job_service
from app.services.scheduler_lease import Lease, make_lease

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    name: str
    work: Callable[[], str]
    every: float  # seconds between starts unless JOB_INTERVAL_<NAME> says otherwise
    needs: str = ""  # a setting that must be set for the job to run (e.g. BACKUP_DIR)

    def interval(self, app: Flask) -> float:
        """Seconds between starts; 0 or less turns the job off."""
        if self.needs and not app.config.get(self.needs):
            return 0.0
        return float(app.config["JOB_INTERVALS"].get(self.name, self.every))


JOBS: tuple[Job, ...] = (
    Job("node_health", job_service.check_node_health, every=300),
    Job("rollouts", deployments.resume_lost, every=60),
    Job("drift", job_service.check_drift, every=3600),
    Job("job_retention", job_service.purge_job_runs, every=86400),
    Job("certificates", certificates.renew_due, every=3600),
    Job("node_metrics", monitoring.poll_node_metrics, every=60),
    Job("metrics_retention", monitoring.apply_retention, every=3600),
    Job("nameservers", nameservers.check_all, every=3600),
    Job("site_checks", uptime.check_sites, every=60),
    Job("alerts", alerts.evaluate, every=60),
    Job("backups", backup.scheduled_backup, every=86400, needs="BACKUP_DIR"),
)


def find_job(name: str, registry: Iterable[Job] = JOBS) -> Job | None:
    return next((job for job in registry if job.name == name), None)


@background("job")
def run_job(name: str) -> None:
    """A job of ``JOBS`` handed by the leader to the task engine, recorded where it
    runs (the worker names itself in the JobRun row)."""
    job = find_job(name)
    if job is None:
        raise LookupError(f"no job is called {name!r}")
    job_service.run_recorded(job.name, job.work, job_service.runner_id("task"))


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
        still lead when it ends.  With the task engine on, a job of ``JOBS`` runs on
        a worker and the thread waits for it: jobs still run one at a time."""
        done = threading.Event()

        def work() -> None:
            try:
                with self.app.app_context():
                    if distributed(self.app) and job in JOBS:
                        key = JOBS.index(job)
                        executor.submit("job", key, run_job, job.name, app=self.app)
                        executor.join("job", key, None)
                    else:
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
