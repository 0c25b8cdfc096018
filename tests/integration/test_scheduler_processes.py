"""Scheduler leadership across real processes on one real PostgreSQL.

Each test module run creates its own database (named uniquely, dropped afterwards) on
the server named by TEST_POSTGRES_ADMIN_URL, which scripts/test-inner.sh provides to
both suite runs.  The evidence is the JobRun rows the app processes leave behind."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime

import pytest
import yaml
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from app import create_app
from app.extensions import db
from app.scheduler import Job, Scheduler
from tests.components import AppServer, app_env, flask_cli, postgres_database
from tests.processes import free_port


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with postgres_database("rpcc_sched") as url:
        yield url


@pytest.fixture()
def engine(database: str) -> Iterator[Engine]:
    engine = create_engine(database, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM job_runs"))
        conn.execute(text("DELETE FROM scheduler_leases"))
    yield engine
    engine.dispose()


def job_runs(engine: Engine, job: str) -> list[tuple[str, str, datetime, datetime | None, str]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(
            "SELECT runner, status, started_at, finished_at, detail FROM job_runs "
            "WHERE job = :job ORDER BY started_at, id"), {"job": job})]


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def assert_one_at_a_time(runs: list[tuple[str, str, datetime, datetime | None, str]]) -> None:
    for earlier, later in zip(runs, runs[1:], strict=False):
        assert earlier[3] is not None and earlier[3] <= later[2], (earlier, later)


def parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("PPid:"))


def health(server: AppServer) -> dict:
    with urllib.request.urlopen(f"{server.url}/health", timeout=10) as response:
        return json.loads(response.read())


def test_two_app_processes_run_jobs_from_one_leader_and_hand_over_on_sigterm(
        database, engine, tmp_path):
    """Two gunicorn instances on one database, with the node health job running back
    to back (each run probes a node that does not answer, which takes a while): every
    run comes from one process, runs never overlap, and when that process is stopped
    the other carries on, still one run at a time."""
    closed = free_port()
    inventory = tmp_path / "nodes.yaml"
    inventory.write_text(yaml.safe_dump({"nodes": [{
        "name": "silent", "host": "127.0.0.1", "ssh_port": closed, "http_port": closed,
        "ssh_password": "not-used-nobody-answers"}]}))
    env = app_env(database, SCHEDULER_HEARTBEAT="0.3", SCHEDULER_LEASE_TTL="5",
                  JOB_INTERVAL_NODE_HEALTH="0.2", JOB_INTERVAL_DRIFT="0",
                  JOB_INTERVAL_JOB_RETENTION="0", SSH_RETRIES="0")
    flask_cli(env, "nodes", "discover", str(inventory))
    servers = [AppServer(env), AppServer(env)]
    try:
        def finished() -> list:
            return [r for r in job_runs(engine, "node_health") if r[3] is not None]

        wait_for(lambda: len(finished()) >= 5)
        runs = job_runs(engine, "node_health")
        runners = {r[0] for r in runs}
        assert len(runners) == 1, runners
        leader = runners.pop()
        assert_one_at_a_time(finished())
        assert {r[1] for r in finished()} == {"succeeded"}
        assert finished()[0][4] == "1 node(s) checked: 0 healthy, 1 not"
        assert finished()[-1][2] > finished()[0][3]  # really back to back, not one run
        for server in servers:  # anyone learns that a scheduler leads, not which
            assert health(server) == {"status": "ok", "degraded": []}

        leader_master = parent_pid(int(leader.split(":")[1]))
        (leading,) = [s for s in servers if s.process.pid == leader_master]
        (other,) = [s for s in servers if s is not leading]
        leading.stop()  # SIGTERM: gunicorn stops its worker gracefully
        assert leading.process.returncode == 0

        wait_for(lambda: len([r for r in finished() if r[0] != leader]) >= 3)
        runs = job_runs(engine, "node_health")
        owners = [r[0] for r in runs]
        switch = next(i for i, owner in enumerate(owners) if owner != leader)
        successor = owners[switch]
        assert set(owners[:switch]) == {leader} and set(owners[switch:]) == {successor}
        # The stopped leader finished its last run before giving the lease back.
        assert all(r[1] == "succeeded" for r in runs[:switch])
        assert_one_at_a_time([r for r in runs if r[3] is not None])
        assert health(other) == {"status": "ok", "degraded": []}
        with engine.connect() as conn:
            assert conn.execute(text("SELECT status FROM nodes WHERE name = 'silent'")) \
                .scalar() == "offline"
    finally:
        for server in servers:
            server.stop()


def test_a_leader_whose_lock_connection_dies_stops_leading_until_it_wins_the_lock_again(
        database, engine):
    app = create_app("testing", {"SQLALCHEMY_DATABASE_URI": database,
                                 "SCHEDULER_HEARTBEAT": 0.1, "SCHEDULER_LEASE_TTL": 5.0})
    job = Job("tick", lambda: "tick", every=0.01)
    first, second = Scheduler(app, [job], runner="first"), Scheduler(app, [job], runner="second")
    def lock_sessions() -> list[int]:
        """The scheduler sessions, once a closed one has left: a backend whose client
        hung up stays listed until its process has exited, which a busy machine delays."""
        deadline = time.monotonic() + 10
        while True:
            with engine.connect() as conn:
                pids = conn.execute(text(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = "
                    "'rpcc-scheduler' AND datname = current_database()")).scalars().all()
            if len(pids) <= 1 or time.monotonic() >= deadline:
                return list(pids)
            time.sleep(0.05)

    try:
        first.step()
        second.step()
        assert first.is_leader and not second.is_leader
        # Renewals keep the one session that holds the lock; the follower keeps none.
        holder = lock_sessions()
        assert len(holder) == 1
        first.step()
        second.step()
        assert first.is_leader and lock_sessions() == holder

        # The server ends the session holding the lock (as when a network or a
        # PostgreSQL failover cuts it): the lock goes with it.
        # With a timeout, pg_terminate_backend waits until the session has ended (and
        # its lock is gone) instead of only sending the signal.
        with engine.connect() as conn:
            killed = conn.execute(text(
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                "WHERE application_name = 'rpcc-scheduler' AND datname = current_database()"
            )).scalars().all()
        assert killed == [True]
        second.step()
        assert second.is_leader
        runs_before = len(job_runs(engine, "tick"))
        first.step()
        assert not first.is_leader
        assert len(job_runs(engine, "tick")) == runs_before  # a non-leader runs nothing

        second.stop()
        first.step()
        assert first.is_leader
        runners = [r[0] for r in job_runs(engine, "tick")]
        assert runners[0] == "first" and runners[-1] == "first" and "second" in runners
    finally:
        first.stop()
        second.stop()
        with app.app_context():
            db.engine.dispose()
