"""The task engine end to end: a real redis-server on loopback as the broker, two real
Celery workers (``flask --app wsgi worker``, prefork pools of two processes) on one
real PostgreSQL database, real nginx nodes reached over a real sshd.  This process
is the app's web side: it asks through the API and reads progress there, while the
work runs in the workers.

A rollout's progress shows through the API while a worker runs it; a worker process
killed in the middle of a rollout leaves each node on its previous release or the
new one, and the task, handed back, is finished by another process once the dead
run's leases expire; the scheduler's leader hands each due job to the workers,
which run each once.  Without Redis, the rollouts' second runs are tested in this
process: a finished rollout is not run again, a second run waits while the first
lives, and after a dead first run deploys only the nodes it left unfinished.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import insert, select, update

from app import create_app
from app.executor import executor
from app.extensions import db, ssh
from app.models import (
    ConfigVersion,
    DeploymentStatus,
    JobRun,
    JobStatus,
    NodeDeployment,
    NodeLease,
    Rollout,
    SchedulerLease,
    User,
)
from app.models.base import as_utc, utcnow
from app.scheduler import JOBS, Scheduler, run_job
from app.services import deployments, nodes, sites
from app.services.deployments import rollout as rollout_service
from tests import factories
from tests.components import app_env, postgres_database
from tests.conftest import api_headers
from tests.fleet import Backends, FleetNode, register, start_fleet
from tests.nginx_node import Backend
from tests.processes import free_port
from tests.sshd import SshServer
from tests.task_engine import RedisServer, Worker

REDIS = "127.0.0.150"
NODES = ("127.0.0.151", "127.0.0.152", "127.0.0.153")
LOCAL_NODES = ("127.0.0.155", "127.0.0.156", "127.0.0.157")
DOMAIN = "tasks.example.com"
# DEPLOY_LOCK_TTL of every process: how long a dead run's leases outlive it.
LEASE_TTL = 8.0
TIMEOUT = 180.0  # a generous functional bound, not a performance figure
# The jobs the leader hands over in the scheduler's test (the others are off).
SCHEDULED = ("node_health", "drift", "job_retention", "certificates", "metrics_retention",
             "alerts", "site_checks")


def wait_for(condition: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return result


@dataclass
class Engine:
    app: Flask
    workers: list[Worker]
    admin_headers: dict[str, str]

    def pool_pids(self) -> set[int]:
        return {pid for worker in self.workers for pid in worker.pool()}


def engine_settings(database_url: str, broker_url: str) -> dict[str, str]:
    return app_env(database_url, CELERY_BROKER_URL=broker_url,
                   DEPLOY_LOCK_TTL=str(LEASE_TTL), ALLOW_CUSTOM_NODE_COMMANDS="1")


@pytest.fixture(scope="module")
def engine(sshd: SshServer) -> Iterator[Engine]:
    """Redis, two workers and this process's app on one PostgreSQL database, with an
    administrator and three nginx nodes."""
    with postgres_database("rpcc_tasks") as url, ExitStack() as teardown:
        redis = RedisServer(REDIS)
        teardown.callback(redis.stop)
        env = engine_settings(url, redis.url)
        workers = []
        for name in ("one", "two"):
            worker = Worker(env, name)
            teardown.callback(worker.stop)
            workers.append(worker)
        app = create_app("testing", {
            "SQLALCHEMY_DATABASE_URI": url, "ENCRYPTION_KEYS": env["ENCRYPTION_KEYS"],
            "CELERY_BROKER_URL": redis.url, "DEPLOY_LOCK_TTL": LEASE_TTL,
            "ALLOW_CUSTOM_NODE_COMMANDS": True, "RATELIMIT_ENABLED": False})
        teardown.callback(ssh.reset, app)
        with app.app_context():
            admin = factories.make_user("admin", "chief")
            headers = api_headers(admin)
        yield Engine(app, workers, headers)


@pytest.fixture(scope="module")
def fleet(engine: Engine, sshd: SshServer) -> Iterator[list[FleetNode]]:
    with ExitStack() as teardown:
        started = start_fleet(teardown, NODES)
        with engine.app.app_context():
            admin = user("chief")
            registered = [register(admin, nginx, f"edge-{i}", sshd.port, sshd.client_key_text)
                          for i, nginx in enumerate(started)]
        yield registered


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    running = Backends()
    yield running.start("tasks")
    running.stop()


@pytest.fixture()
def gate() -> Iterator[Path]:
    """While this file exists, a stalled node's test command waits."""
    root = Path(tempfile.mkdtemp(prefix="rpcc-gate-"))
    yield root / "closed"
    shutil.rmtree(root, ignore_errors=True)


def user(name: str) -> User:
    found = db.session.scalar(select(User).where(User.username == name))
    assert found is not None
    return found


def stall(admin: User, node: FleetNode, gate: Path) -> None:
    """Make ``node``'s test command wait while ``gate`` exists, then test as before:
    a deployment of the node is held after its swap, before its reload."""
    command = shlex.split(node.nginx.spec.test_command)
    nodes.update_node(admin, node.id, {"test_command": shlex.join(
        ["sh", "-c", 'while [ -e "$0" ]; do sleep 0.05; done; exec "$@"', str(gate),
         *command])})


@pytest.fixture(scope="module")
def site(engine: Engine, fleet: list[FleetNode], backend: Backend) -> int:
    """A client's site, deployed once to every node through the workers."""
    with engine.app.app_context():
        alice = factories.make_user("client", "alice")
        site = factories.make_site(alice, DOMAIN, backends=[
            {"host": "127.0.0.1", "port": backend.port}], headers={"X-Round": "0"})
        rollout = deployments.deploy_site(alice, site.id)
        done = deployments.wait(rollout.id, timeout=TIMEOUT)
        assert done.status == DeploymentStatus.SUCCEEDED, done.error
        return site.id


def state(client: FlaskClient, engine: Engine, rollout_id: int) -> dict[str, Any]:
    answer = client.get(f"/api/v1/deployments/{rollout_id}", headers=engine.admin_headers)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return answer.get_json()


def change_and_deploy(engine: Engine, client: FlaskClient, site_id: int, value: str) -> int:
    """A new value of the site's header, deployed through the API (202 at once)."""
    with engine.app.app_context():
        sites.update_site(user("alice"), site_id, {"headers": {"X-Round": value}})
    answer = client.post(f"/api/v1/sites/{site_id}/deploy", headers=engine.admin_headers)
    assert answer.status_code == 202, answer.get_data(as_text=True)
    return int(answer.get_json()["id"])


def runner_pid(engine: Engine, rollout_id: int) -> int:
    """The process that last ran the rollout, from the lease it recorded."""
    with engine.app.app_context():
        runner = db.session.scalar(select(Rollout.runner).where(Rollout.id == rollout_id))
        db.session.rollback()
    assert runner, "the rollout names no runner"
    return int(runner.split(":")[1])


def holds(node: FleetNode, version: ConfigVersion) -> bool:
    """Whether the files the node's nginx loads are exactly those of ``version``."""
    files = deployments.version_files(version, keys=True)
    on_disk = {path: (node.nginx.config_dir / path).read_text() for path in files
               if (node.nginx.config_dir / path).is_file()}
    return on_disk == files and sorted(node.snapshot()) == sorted(files)


def test_a_rollout_runs_on_a_worker_and_its_progress_shows_through_the_api(
        engine, fleet, site, gate):
    victim, others = fleet[0], fleet[1:]
    with engine.app.app_context():
        stall(user("chief"), victim, gate)
    before = victim.get(DOMAIN).headers["x-round"]
    gate.touch()
    client = engine.app.test_client()
    try:
        rollout_id = change_and_deploy(engine, client, site, "1")

        def others_done_victim_testing() -> dict[str, Any] | None:
            now = state(client, engine, rollout_id)
            by_name = {n["node"]: n for n in now["nodes"]}
            held = by_name[victim.name]
            return now if (held["status"] == "running" and held["step"] == "test"
                           and all(by_name[n.name]["status"] == "succeeded"
                                   for n in others)) else None

        midway = wait_for(others_done_victim_testing)
        assert midway["status"] == "running"
        assert {step["step"] for n in midway["nodes"] if n["node"] != victim.name
                for step in n["steps"]} >= {"lock", "render", "upload", "test", "reload",
                                            "verify"}
        assert victim.get(DOMAIN).headers["x-round"] == before
    finally:
        gate.unlink(missing_ok=True)
    final = wait_for(lambda: (now := state(client, engine, rollout_id))["status"] != "running"
                     and now)
    assert final["status"] == "succeeded", final
    assert {n["status"] for n in final["nodes"]} == {"succeeded"}
    assert all(node.get(DOMAIN).headers["x-round"] == "1" for node in fleet)
    # A pool process of a worker ran it, not this process.
    assert runner_pid(engine, rollout_id) in engine.pool_pids()


def test_a_worker_process_killed_mid_rollout_leaves_each_node_on_one_release_and_the_task_runs_again(  # noqa: E501
        engine, fleet, site, gate):
    victim, others = fleet[0], fleet[1:]
    with engine.app.app_context():
        stall(user("chief"), victim, gate)
        previous = {node.id: deployments.current_version(node.id).id for node in fleet}
        db.session.rollback()
    before = victim.get(DOMAIN).headers["x-round"]
    gate.touch()
    client = engine.app.test_client()
    try:
        rollout_id = change_and_deploy(engine, client, site, "2")
        wait_for(lambda: all(
            (n["status"], n["step"]) == (("running", "test") if n["node"] == victim.name
                                        else ("succeeded", ""))
            for n in state(client, engine, rollout_id)["nodes"]))
        from app import tasks

        inspector = tasks.celery_app(engine.app).control.inspect(timeout=5)
        running = [task for tasks_of in (inspector.active() or {}).values()
                   for task in tasks_of if task["args"] == ["rollout", [rollout_id]]]
        assert len(running) == 1, running
        killed = running[0]["worker_pid"]
        assert killed == runner_pid(engine, rollout_id) and killed in engine.pool_pids()
        os.kill(killed, signal.SIGKILL)
        wait_for(lambda: killed not in engine.pool_pids())

        with engine.app.app_context():
            db.session.expire_all()
            rollout = db.session.get(Rollout, rollout_id)
            taken = {d.node_id: d.config_version for d in rollout.deployments}
            finished = {d.node_id: d.finished_at for d in rollout.deployments
                        if d.status.finished}
            # Each node holds its previous release or the new one, whole: the others
            # took the new one; the victim's was swapped in, tested by nobody, and
            # its nginx still serves the previous configuration.
            for node in fleet:
                assert holds(node, taken[node.id]) or holds(
                    node, db.session.get(ConfigVersion, previous[node.id])), node.name
            assert holds(victim, taken[victim.id])
            assert all(holds(node, taken[node.id]) for node in others)
            swapped_in = taken[victim.id].version
            db.session.rollback()
        assert victim.get(DOMAIN).headers["x-round"] == before
        assert all(node.get(DOMAIN).headers["x-round"] == "2" for node in others)
    finally:
        gate.unlink(missing_ok=True)

    final = wait_for(lambda: (now := state(client, engine, rollout_id))["status"] != "running"
                     and now)
    assert final["status"] == "succeeded", final
    assert all(node.get(DOMAIN).headers["x-round"] == "2" for node in fleet)
    again = runner_pid(engine, rollout_id)
    assert again != killed and again in engine.pool_pids()
    assert all(worker.process.poll() is None for worker in engine.workers)
    with engine.app.app_context():
        rollout = db.session.get(Rollout, rollout_id)
        by_node = {d.node_id: d for d in rollout.deployments}
        # The nodes the dead run finished were left as they were; the victim was
        # deployed once more, from its lock to its verification, and holds that.
        assert {node.id: by_node[node.id].finished_at for node in others} == {
            node.id: finished[node.id] for node in others}
        redone = by_node[victim.id]
        assert redone.config_version.version > swapped_in
        assert [step["step"] for step in redone.steps] == [
            "lock", "render", "upload", "test", "reload", "verify"]
        assert all(step["ok"] for step in redone.steps)
        for node in fleet:
            assert holds(node, deployments.current_version(node.id)), node.name
        assert not db.session.scalars(select(NodeLease)).all()
        db.session.rollback()


def test_the_leader_hands_each_due_job_to_the_workers_which_run_it_once(
        engine, fleet, site, monkeypatch):
    monkeypatch.setitem(engine.app.config, "JOB_INTERVALS", {
        job.name: (3600.0 if job.name in SCHEDULED else 0.0) for job in JOBS})
    monkeypatch.setitem(engine.app.config, "SCHEDULER_HEARTBEAT", 0.2)
    monkeypatch.setitem(engine.app.config, "SCHEDULER_LEASE_TTL", 10.0)
    with engine.app.app_context():
        db.session.execute(JobRun.__table__.delete())
        db.session.commit()

    def runs() -> list[JobRun]:
        with engine.app.app_context():
            found = db.session.scalars(select(JobRun).order_by(JobRun.id)).all()
            db.session.expunge_all()
            return list(found)

    def heartbeat() -> Any:
        with engine.app.app_context():
            lease = db.session.get(SchedulerLease, "scheduler")
            db.session.rollback()
            return lease.heartbeat_at if lease is not None else None

    scheduler = Scheduler(engine.app)
    scheduler.start()
    try:
        wait_for(lambda: {run.job for run in runs() if run.finished_at} == set(SCHEDULED))
        # The leader goes on leading (each round renews its lease) and hands
        # nothing over again: every job ran within this hour.
        for _ in range(3):
            seen = heartbeat()
            wait_for(lambda seen=seen: heartbeat() != seen)
    finally:
        scheduler.stop(timeout=TIMEOUT)
    done = runs()
    assert Counter(run.job for run in done) == Counter(SCHEDULED)
    assert {run.job: run.status for run in done} == dict.fromkeys(SCHEDULED, JobStatus.SUCCEEDED), [
        (run.job, run.detail) for run in done]
    # Each ran in a pool process of a worker, which names itself in the run.
    pools = engine.pool_pids()
    assert all(int(run.runner.split(":")[1]) in pools for run in done), [r.runner for r in done]


def test_a_task_naming_work_that_is_not_registered_runs_nothing(engine):
    from app import tasks

    celery = tasks.celery_app(engine.app)
    result = celery.send_task(tasks.TASK, args=("os.system", ["touch /tmp/rpcc-never"]))
    wait_for(result.ready)
    assert result.state == "FAILURE"
    assert "no background work is called 'os.system'" in str(result.result)
    assert not os.path.exists("/tmp/rpcc-never")
    # The same task with a registered name runs it.
    with engine.app.app_context():
        before = len(db.session.scalars(select(JobRun).where(
            JobRun.job == "job_retention")).all())
        executor.submit("job", 99, run_job, "job_retention")
        executor.join("job", 99, TIMEOUT)
        after = db.session.scalars(select(JobRun).where(JobRun.job == "job_retention")).all()
        assert len(after) == before + 1


def test_without_a_broker_answering_the_work_runs_in_the_process_that_asked(engine):
    with engine.app.app_context():
        url = db.engine.url.render_as_string(hide_password=False)
    app = create_app("testing", {
        "SQLALCHEMY_DATABASE_URI": url,
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"})
    with app.app_context():
        executor.submit("job", 98, run_job, "metrics_retention")
        executor.join("job", 98, TIMEOUT)
        run = db.session.scalars(select(JobRun).where(JobRun.job == "metrics_retention")
                                 .order_by(JobRun.id.desc())).first()
        assert run is not None and run.status == JobStatus.SUCCEEDED
        assert int(run.runner.split(":")[1]) == os.getpid()
        db.session.remove()
    with app.app_context():
        db.engine.dispose()


# --------------------------------------------------------------------------- #
# A rollout run twice, in this process (SQLite and PostgreSQL)                #
# --------------------------------------------------------------------------- #

@pytest.fixture()
def local_fleet(app: Flask, admin: User, sshd: SshServer) -> Iterator[list[FleetNode]]:
    with ExitStack() as teardown:
        teardown.callback(ssh.reset, app)
        started = start_fleet(teardown, LOCAL_NODES)
        yield [register(admin, nginx, f"local-{i}", sshd.port, sshd.client_key_text)
               for i, nginx in enumerate(started)]


@pytest.fixture()
def custom_commands(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stalling test command is no engine's known form."""
    monkeypatch.setitem(app.config, "ALLOW_CUSTOM_NODE_COMMANDS", True)


@pytest.fixture()
def live_site(app: Flask, alice: User, local_fleet: list[FleetNode],
              backends: Backends) -> int:
    backend = backends.start("local")
    site = factories.make_site(alice, "again.example.com", backends=[
        {"host": "127.0.0.1", "port": backend.port}], headers={"X-Round": "0"})
    done = deployments.wait(deployments.deploy_site(alice, site.id).id, timeout=TIMEOUT)
    assert done.status == DeploymentStatus.SUCCEEDED, done.error
    return site.id


def version_numbers(fleet: list[FleetNode]) -> dict[int, int]:
    db.session.expire_all()
    return {node.id: deployments.current_version(node.id).version for node in fleet}


def test_a_finished_rollout_is_not_run_again(app, alice, local_fleet, live_site):
    sites.update_site(alice, live_site, {"headers": {"X-Round": "1"}})
    rollout = deployments.wait(deployments.deploy_site(alice, live_site).id, timeout=TIMEOUT)
    assert rollout.status == DeploymentStatus.SUCCEEDED
    numbers, finished_at = version_numbers(local_fleet), rollout.finished_at
    count = db.session.query(ConfigVersion).count()
    rollout_service.run_rollout(rollout.id)
    db.session.expire_all()
    assert db.session.get(Rollout, rollout.id).finished_at == finished_at
    assert version_numbers(local_fleet) == numbers
    assert db.session.query(ConfigVersion).count() == count


def runner_lease(rollout_id: int) -> tuple[str, datetime | None]:
    db.session.expire_all()
    holder, until = db.session.execute(select(Rollout.runner, Rollout.runner_expires_at)
                                       .where(Rollout.id == rollout_id)).one()
    db.session.rollback()
    return holder, as_utc(until) if until is not None else None


def test_a_second_run_while_the_first_lives_waits_for_it_and_deploys_no_node_twice(
        app, admin, alice, local_fleet, live_site, gate, custom_commands, monkeypatch):
    # Leases short enough for the first run to outlive its first deadline.
    monkeypatch.setitem(app.config, "DEPLOY_LOCK_TTL", 4.0)
    stalled = local_fleet[0]
    stall(admin, stalled, gate)
    numbers = version_numbers(local_fleet)
    sites.update_site(alice, live_site, {"headers": {"X-Round": "1"}})
    gate.touch()
    try:
        rollout = deployments.deploy_site(alice, live_site)
        wait_for(lambda: any(d.node_id == stalled.id and d.step == "test" for d in
                             deployments.wait(rollout.id, timeout=0).deployments))

        def run_again() -> None:  # what a task handed out again does
            with app.app_context():
                rollout_service.run_rollout(rollout.id)

        second = threading.Thread(target=run_again)
        second.start()
        # The first run, stalled, keeps its lease past the deadline it started with.
        holder, first_deadline = runner_lease(rollout.id)
        assert holder and first_deadline is not None
        wait_for(lambda: utcnow() > first_deadline
                 and (runner_lease(rollout.id)[1] or first_deadline) > first_deadline)
        assert runner_lease(rollout.id)[0] == holder and second.is_alive()
    finally:
        gate.unlink(missing_ok=True)
    done = deployments.wait(rollout.id, timeout=TIMEOUT)
    second.join(TIMEOUT)
    assert not second.is_alive()
    assert done.status == DeploymentStatus.SUCCEEDED, done.error
    # One new version per node: the second run deployed nothing.
    assert version_numbers(local_fleet) == {node_id: n + 1 for node_id, n in numbers.items()}
    assert all(node.get("again.example.com").headers["x-round"] == "1" for node in local_fleet)


def test_a_second_run_after_a_dead_first_one_deploys_only_its_unfinished_nodes(
        app, alice, local_fleet, live_site, monkeypatch):
    """The state a run leaves when its process dies: the rollout running under a lease
    nobody renews, one node finished, one mid-way under a node lease nobody renews,
    one not started."""
    numbers = version_numbers(local_fleet)
    sites.update_site(alice, live_site, {"headers": {"X-Round": "1"}})
    monkeypatch.setattr(rollout_service, "launch", lambda rollout_id: None)
    rollout_id = deployments.deploy_site(alice, live_site).id
    done_node, midway, untouched = local_fleet
    soon = utcnow() + timedelta(seconds=1)
    rows = {d.node_id: d.id for d in db.session.get(Rollout, rollout_id).deployments}
    db.session.execute(update(Rollout).where(Rollout.id == rollout_id).values(
        status=DeploymentStatus.RUNNING, started_at=utcnow(), runner="dead:1:run",
        runner_expires_at=soon))
    finished_at = utcnow() - timedelta(seconds=5)
    db.session.execute(update(NodeDeployment).where(NodeDeployment.id == rows[done_node.id])
                       .values(status=DeploymentStatus.SUCCEEDED, finished_at=finished_at))
    db.session.execute(update(NodeDeployment).where(NodeDeployment.id == rows[midway.id])
                       .values(status=DeploymentStatus.RUNNING, step="test"))
    db.session.execute(insert(NodeLease).values(node_id=midway.id, holder="dead-run",
                                                acquired_at=utcnow(), expires_at=soon))
    db.session.commit()

    rollout_service.run_rollout(rollout_id)

    db.session.expire_all()
    rollout = db.session.get(Rollout, rollout_id)
    assert rollout.status == DeploymentStatus.SUCCEEDED, rollout.error
    by_node = {d.node_id: d for d in rollout.deployments}
    assert by_node[done_node.id].config_version is None  # left as the dead run left it
    assert by_node[done_node.id].steps == []
    for node in (midway, untouched):
        assert by_node[node.id].status == DeploymentStatus.SUCCEEDED
        assert node.get("again.example.com").headers["x-round"] == "1"
    assert version_numbers(local_fleet) == {
        node_id: n + (node_id != done_node.id) for node_id, n in numbers.items()}
    assert done_node.get("again.example.com").headers["x-round"] == "0"
    assert not db.session.scalars(select(NodeLease)).all()
    assert rollout.runner_expires_at is None
