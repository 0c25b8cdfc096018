"""The scheduler on the test database (SQLite, or PostgreSQL with its advisory lock):
leadership, job runs and their records, the jobs themselves, and what administrators
see on /health, the Jobs page, the API and the CLI."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select

from app.models import AuditLog, JobRun, JobStatus, NodeStatus, SchedulerLease
from app.models.base import as_utc, utcnow
from app.scheduler import JOBS, Job, Scheduler, start_scheduler
from app.services import jobs
from app.services.scheduler_lease import RowLease
from tests import factories
from tests.conftest import api_headers, login, make_app
from tests.processes import free_port


@pytest.fixture()
def fast(app, monkeypatch) -> None:
    """Lease timings short enough for a test to watch a takeover."""
    monkeypatch.setitem(app.config, "SCHEDULER_HEARTBEAT", 0.1)
    monkeypatch.setitem(app.config, "SCHEDULER_LEASE_TTL", 5.0)
    monkeypatch.setitem(app.config, "SCHEDULER_STOP_TIMEOUT", 10.0)


@pytest.fixture()
def schedulers(app, db, fast) -> Iterator[Callable[..., Scheduler]]:
    """Build schedulers; every one is stopped (and its lease given back) at the end."""
    made: list[Scheduler] = []

    def build(*job_list: Job, runner: str | None = None, **kwargs) -> Scheduler:
        scheduler = Scheduler(app, job_list, runner=runner, **kwargs)
        made.append(scheduler)
        return scheduler

    yield build
    for scheduler in made:
        scheduler.stop()


def runs(db, job: str | None = None) -> list[JobRun]:
    db.session.rollback()  # a fresh snapshot: other threads wrote since
    stmt = select(JobRun).order_by(JobRun.started_at, JobRun.id)
    if job:
        stmt = stmt.where(JobRun.job == job)
    return list(db.session.scalars(stmt))


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def done_work(summary: str = "done") -> Callable[[], str]:
    return lambda: summary


def boom() -> str:
    raise RuntimeError("disk on fire")


# --------------------------------------------------------------------------- runs


def test_failing_job_is_recorded_as_failed_and_the_next_job_still_runs(db, schedulers):
    scheduler = schedulers(Job("explodes", boom, every=0.2), Job("counts", done_work("3 things"),
                                                                  every=0.2))
    scheduler.start()
    wait_for(lambda: len(runs(db, "explodes")) >= 2 and len(runs(db, "counts")) >= 2)
    scheduler.stop()

    failed = runs(db, "explodes")
    assert {r.status for r in failed} == {JobStatus.FAILED}
    assert all(r.detail == "RuntimeError: disk on fire" and r.finished_at for r in failed)
    succeeded = runs(db, "counts")
    assert {r.status for r in succeeded} == {JobStatus.SUCCEEDED}
    assert {r.detail for r in succeeded} == {"3 things"}
    assert {r.runner for r in failed + succeeded} == {scheduler.runner}


def test_runs_follow_each_jobs_interval_and_a_zero_interval_turns_a_job_off(
        app, db, schedulers, monkeypatch):
    monkeypatch.setitem(app.config, "JOB_INTERVALS", {"quiet": 0.0})
    scheduler = schedulers(Job("hourly", done_work(), every=3600), Job("quiet", done_work(),
                                                                       every=0.1))
    for _ in range(3):
        scheduler.step()
    assert [r.job for r in runs(db)] == ["hourly"]
    # Due times come from the records, so a new leader does not run it again.
    scheduler.stop()
    successor = schedulers(Job("hourly", done_work(), every=3600))
    assert successor.step() > 0
    assert successor.is_leader and len(runs(db)) == 1


# ----------------------------------------------------------------------- leadership


def test_only_one_scheduler_leads_and_another_takes_over_when_it_stops(
        app, db, schedulers, client):
    job = Job("tick", done_work(), every=0.05)
    first, second = schedulers(job, runner="first"), schedulers(job, runner="second")
    first.step()
    second.step()
    assert first.is_leader and not second.is_leader
    assert {r.runner for r in runs(db)} == {"first"}
    # Anyone: ok or degraded, nothing about processes (administrators only).
    assert client.get("/health").get_json() == {"status": "ok", "degraded": []}
    login(client, factories.make_user("admin", "watcher"))
    health = client.get("/health").get_json()
    assert health["status"] == "ok" and health["scheduler"]["running"] is True
    assert health["scheduler"]["leader"] == "first"
    assert 0 <= health["scheduler"]["heartbeat_age_seconds"] < 5

    time.sleep(0.1)
    second.step()  # still a follower: runs nothing although the job is due
    assert not second.is_leader and {r.runner for r in runs(db)} == {"first"}

    first.stop()  # graceful: the lease is given back at once
    stopped = client.get("/health").get_json()
    assert stopped["scheduler"]["leader"] is None and stopped["degraded"] == ["scheduler"]
    second.step()
    assert second.is_leader and not first.is_leader
    assert runs(db)[-1].runner == "second"
    assert client.get("/health").get_json()["scheduler"]["leader"] == "second"


def test_two_running_schedulers_never_run_jobs_at_the_same_time(db, schedulers):
    def slow() -> str:
        time.sleep(0.05)
        return "slow"

    job = Job("slow", slow, every=0.01)
    first, second = schedulers(job, runner="first"), schedulers(job, runner="second")
    first.start()
    second.start()
    wait_for(lambda: len(runs(db)) >= 8)
    leader, follower = (first, second) if runs(db)[0].runner == "first" else (second, first)
    leader.stop()
    wait_for(lambda: runs(db)[-1].runner == follower.runner and len(
        [r for r in runs(db) if r.runner == follower.runner]) >= 3)
    follower.stop()

    finished = runs(db)
    assert {r.status for r in finished} == {JobStatus.SUCCEEDED}
    # One runner, then the other: never interleaved, never overlapping.
    owners = [r.runner for r in finished]
    switch = owners.index(follower.runner)
    assert set(owners[:switch]) == {leader.runner} and set(owners[switch:]) == {follower.runner}
    for earlier, later in zip(finished, finished[1:], strict=False):
        assert as_utc(earlier.finished_at) <= as_utc(later.started_at)


def test_a_long_job_keeps_the_lease_renewed(db, schedulers):
    """The lease lives 1 s past each renewal; a job of 2.5 s must not let another
    process in."""
    def long_job() -> str:
        time.sleep(2.5)
        return "long"

    leader = schedulers(Job("long", long_job, every=3600), runner="leader",
                        lease=RowLease("leader", 1.0))
    challenger = schedulers(Job("long", long_job, every=3600), runner="challenger",
                            lease=RowLease("challenger", 1.0))
    leader.start()
    wait_for(lambda: bool(runs(db)))
    while runs(db)[0].status == JobStatus.RUNNING:
        challenger.step()
        assert not challenger.is_leader
        time.sleep(0.1)
    assert runs(db)[0].runner == "leader" and runs(db)[0].status == JobStatus.SUCCEEDED


def test_an_expired_lease_is_taken_over_and_its_unfinished_run_closed(db, schedulers):
    """A crashed leader leaves its lease and a run marked running; once the lease
    has expired the next process leads and records that the run never finished."""
    now = utcnow()
    db.session.add(SchedulerLease(name="scheduler", holder="crashed", heartbeat_at=now,
                                  expires_at=now + timedelta(seconds=30)))
    db.session.add(JobRun(job="tick", runner="crashed", status=JobStatus.RUNNING,
                          started_at=now))
    db.session.add(JobRun(job="drift", runner="ops:77:cli-1234abcd", status=JobStatus.RUNNING,
                          started_at=now))  # an operator's `jobs run`, needing no lease
    db.session.commit()
    job = Job("tick", done_work(), every=3600)
    successor = schedulers(job, runner="successor", lease=RowLease("successor", 30))
    successor.step()
    assert not successor.is_leader  # the lease still runs

    lease = db.session.get(SchedulerLease, "scheduler")
    lease.expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    successor.step()
    assert successor.is_leader
    crashed = runs(db, "tick")[0]
    assert crashed.runner == "crashed" and crashed.status == JobStatus.FAILED
    assert "interrupted" in crashed.detail and crashed.finished_at is not None
    assert runs(db, "drift")[0].status == JobStatus.RUNNING
    db.session.refresh(lease)
    assert lease.holder == "successor" and as_utc(lease.expires_at) > utcnow()


def test_lease_timings_that_would_expire_between_renewals_are_refused(app, monkeypatch):
    monkeypatch.setitem(app.config, "SCHEDULER_HEARTBEAT", 10.0)
    monkeypatch.setitem(app.config, "SCHEDULER_LEASE_TTL", 15.0)
    with pytest.raises(ValueError, match="SCHEDULER_LEASE_TTL"):
        Scheduler(app, JOBS)


def test_no_scheduler_thread_under_tests_or_when_turned_off(app, db):
    assert start_scheduler(app) is None
    production_like = make_app(TESTING=False, SCHEDULER_ENABLED=False)
    assert start_scheduler(production_like) is None
    assert "rpcc_scheduler" not in production_like.extensions
    assert not [t for t in threading.enumerate() if t.name == "rpcc-scheduler"]


# -------------------------------------------------------------------------- the jobs


def test_retention_deletes_only_finished_runs_older_than_the_limit(app, db, monkeypatch):
    monkeypatch.setitem(app.config, "JOB_RUN_RETENTION_DAYS", 30)
    old = utcnow() - timedelta(days=31)
    db.session.add_all([
        JobRun(job="drift", runner="r", status=JobStatus.SUCCEEDED, started_at=old,
               finished_at=old),
        JobRun(job="drift", runner="r", status=JobStatus.RUNNING, started_at=old),
        JobRun(job="drift", runner="r", status=JobStatus.FAILED,
               started_at=utcnow() - timedelta(days=29)),
    ])
    db.session.commit()
    assert jobs.purge_job_runs() == "deleted 1 run(s) older than 30 day(s)"
    assert sorted(r.status.value for r in runs(db)) == ["failed", "running"]


def test_node_health_job_marks_unreachable_nodes_offline(app, db):
    closed = free_port()
    down = factories.make_node("down", host="127.0.0.1", ssh_port=closed, http_port=closed)
    factories.make_node("off", host="127.0.0.1", ssh_port=closed, http_port=closed,
                        enabled=False)

    assert jobs.check_node_health() == "1 node(s) checked: 0 healthy, 1 not"
    db.session.rollback()
    db.session.refresh(down)
    assert down.status == NodeStatus.OFFLINE and not down.last_check["ssh"]["ok"]
    assert down.last_check_at is not None
    entry = db.session.scalar(select(AuditLog).where(AuditLog.action == "node.check"))
    assert entry.username == "scheduler" and entry.user_id is None


def test_drift_job_compares_only_deployed_nodes(db):
    factories.make_node("never-deployed")
    assert jobs.check_drift() == "0 deployed node(s) compared: 0 drifted"


# ------------------------------------------------------------- what admins see of it


def _seed_runs(db) -> None:
    started = utcnow() - timedelta(minutes=5)
    db.session.add_all([
        JobRun(job="node_health", runner="web-1:10:a", status=JobStatus.SUCCEEDED,
               started_at=started, finished_at=started + timedelta(seconds=2),
               detail="3 node(s) checked: 3 healthy, 0 not"),
        JobRun(job="drift", runner="web-1:10:a", status=JobStatus.FAILED,
               started_at=started + timedelta(minutes=1),
               finished_at=started + timedelta(minutes=1, seconds=1),
               detail="OperationalError: <script>gone</script>"),
    ])
    db.session.commit()


def test_api_lists_job_runs_newest_first_with_filters(db, client, admin, alice):
    _seed_runs(db)
    headers = api_headers(admin)
    body = client.get("/api/v1/jobs", headers=headers).get_json()
    assert set(body) == {"items", "page", "per_page", "total"} and body["total"] == 2
    assert [item["job"] for item in body["items"]] == ["drift", "node_health"]
    first = body["items"][0]
    assert first["status"] == "failed" and first["runner"] == "web-1:10:a"
    assert first["started_at"].endswith("+00:00") and first["finished_at"]
    # One more run of each job with the other outcome: each filter must do its part.
    earlier = utcnow() - timedelta(minutes=10)
    db.session.add_all([
        JobRun(job="node_health", runner="web-1:10:a", status=JobStatus.FAILED,
               started_at=earlier, finished_at=earlier, detail="timeout"),
        JobRun(job="drift", runner="web-1:10:a", status=JobStatus.SUCCEEDED,
               started_at=earlier, finished_at=earlier, detail="0 drifted"),
    ])
    db.session.commit()

    def listed(query: str) -> list[tuple[str, str]]:
        items = client.get(f"/api/v1/jobs?{query}", headers=headers).get_json()["items"]
        return sorted((item["job"], item["status"]) for item in items)

    assert listed("status=succeeded&job=node_health") == [("node_health", "succeeded")]
    assert listed("job=node_health") == [("node_health", "failed"), ("node_health", "succeeded")]
    assert listed("status=failed") == [("drift", "failed"), ("node_health", "failed")]
    bad = client.get("/api/v1/jobs?status=exploded", headers=headers)
    assert bad.status_code == 422 and "status" in bad.get_json()["error"]["fields"]
    assert client.get("/api/v1/jobs", headers=api_headers(alice)).status_code == 403
    assert client.get("/api/v1/jobs").status_code == 401


def test_jobs_page_shows_the_leader_schedule_and_runs(app, db, admin_client, alice_client,
                                                      schedulers):
    _seed_runs(db)
    leader = schedulers(Job("node_health", done_work(), every=3600), runner="web-2:20:b")
    leader.step()
    page = admin_client.get("/admin/jobs").get_data(as_text=True)
    assert "Jobs run in <code>web-2:20:b</code>" in page
    for name in ("node_health", "drift", "job_retention"):
        assert f"<code>{name}</code>" in page
    assert "&lt;script&gt;gone&lt;/script&gt;" in page and "<script>gone" not in page
    filtered = admin_client.get("/admin/jobs?status=failed").get_data(as_text=True)
    assert "OperationalError" in filtered and "3 node(s) checked" not in filtered
    assert admin_client.get("/admin/jobs?status=nope").status_code == 422
    assert alice_client.get("/admin/jobs").status_code == 403
    leader.stop()
    assert "No process leads" in admin_client.get("/admin/jobs").get_data(as_text=True)


def test_cli_runs_one_job_once_and_records_it(app, db):
    old = utcnow() - timedelta(days=90)
    db.session.add(JobRun(job="drift", runner="r", status=JobStatus.SUCCEEDED,
                          started_at=old, finished_at=old))
    db.session.commit()
    result = app.test_cli_runner().invoke(args=["jobs", "run", "job_retention"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("job_retention: succeeded (deleted 1 run(s)")
    (run,) = runs(db)
    assert run.job == "job_retention" and ":cli-" in run.runner
    unknown = app.test_cli_runner().invoke(args=["jobs", "run", "nope"])
    assert unknown.exit_code != 0 and "nope" in unknown.output
