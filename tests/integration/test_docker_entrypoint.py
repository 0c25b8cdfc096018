"""The image's entrypoint (docker/entrypoint.sh), run outside a container as the
image runs it: the project's Python on PATH, the app's settings in the environment,
a harmless command in place of gunicorn.

Concurrent starts use a database of their own, not yet migrated, on the PostgreSQL
server that scripts/test-inner.sh starts (TEST_POSTGRES_ADMIN_URL)."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from app.services.startup import LOCK_NAMESPACE, MIGRATION_LOCK_KEY
from tests.components import ROOT, app_env, postgres_database
from tests.processes import free_port, stop

ENTRYPOINT = os.path.join(ROOT, "docker", "entrypoint.sh")
COMMAND = ["echo", "the container's command ran"]
RAN = "the container's command ran"


def entrypoint_env(database_url: str, **extra: str) -> dict[str, str]:
    env = app_env(database_url, **extra)
    env["PATH"] = f"{os.path.join(ROOT, '.venv', 'bin')}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    return env


def start_entrypoint(env: dict[str, str]) -> subprocess.Popen[str]:
    # From another directory: the entrypoint finds the app from its own location.
    return subprocess.Popen([ENTRYPOINT, *COMMAND], env=env, cwd=tempfile.gettempdir(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_entrypoint(env: dict[str, str]) -> tuple[int, str]:
    process = start_entrypoint(env)
    try:
        output, _ = process.communicate(timeout=120)
    finally:
        stop(process)
    return process.returncode, output


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not in time")
        time.sleep(0.05)


@pytest.fixture()
def empty_database() -> Iterator[str]:
    with postgres_database("rpcc_entrypoint", migrated=False) as url:
        yield url


def test_two_instances_starting_together_migrate_once_and_both_run_their_command(
        empty_database: str):
    """The test holds the migration lock while both instances start, so that both
    are waiting for it at once when it is released: one migrates, the other finds
    the schema up to date, and both go on to their command."""
    engine = create_engine(empty_database, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    keys = {"ns": LOCK_NAMESPACE, "key": MIGRATION_LOCK_KEY}
    processes: list[subprocess.Popen[str]] = []
    try:
        with engine.connect() as holder, engine.connect() as observer:
            holder.execute(text("SELECT pg_advisory_lock(:ns, :key)"), keys)
            env = entrypoint_env(empty_database)
            processes = [start_entrypoint(env), start_entrypoint(env)]

            def both_waiting() -> bool:
                assert all(p.poll() is None for p in processes), "an instance exited early"
                return observer.execute(text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                    "AND classid = :ns AND objid = :key AND objsubid = 2"), keys).scalar() == 2

            wait_for(both_waiting, "both instances waiting for the migration lock")
            holder.execute(text("SELECT pg_advisory_unlock(:ns, :key)"), keys)
        outputs = [p.communicate(timeout=180)[0] for p in processes]
        assert [p.returncode for p in processes] == [0, 0], outputs
        with engine.connect() as conn:
            revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            assert conn.execute(text("SELECT count(*) FROM users")).scalar() == 0
    finally:
        for process in processes:
            stop(process)
        engine.dispose()

    migrated = [out for out in outputs if f"database migrated: empty -> {revision}" in out]
    found_done = [out for out in outputs if f"database up to date: {revision}" in out]
    assert len(migrated) == 1 and len(found_done) == 1, outputs
    for output in outputs:
        assert "another instance is migrating the database: waiting for it" in output
        assert output.rstrip().endswith(RAN), output
    assert "Running upgrade" not in found_done[0]


def test_gives_up_on_a_database_that_never_answers_and_says_so():
    port = free_port()
    env = entrypoint_env(f"postgresql+psycopg://rpcc:secret-password@127.0.0.1:{port}/rpcc",
                         DB_WAIT_ATTEMPTS="3", DB_WAIT_INTERVAL="0")
    status, output = run_entrypoint(env)
    assert status != 0
    assert "database not ready (attempt 1 of 3)" in output
    assert "database not ready (attempt 2 of 3)" in output
    assert (f"the database (postgresql at 127.0.0.1:{port}, database rpcc) did not answer "
            "after 3 attempts, 0 s apart") in output
    assert "Connection refused" in output
    assert "secret-password" not in output
    assert RAN not in output


def test_production_without_secrets_stops_with_the_apps_reason(tmp_path: Path):
    env = entrypoint_env(f"sqlite:///{tmp_path / 'rpcc.db'}", APP_ENV="production")
    del env["SECRET_KEY"], env["ENCRYPTION_KEYS"]
    status, output = run_entrypoint(env)
    assert status != 0
    assert output.strip() == ("refusing to start: production needs SECRET_KEY and "
                              "ENCRYPTION_KEYS in the environment")
    assert not (tmp_path / "rpcc.db").exists()


def test_first_administrator_only_when_asked_and_only_once(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'rpcc.db'}"
    status, output = run_entrypoint(entrypoint_env(url))
    assert status == 0, output
    assert "no administrator yet: set FIRST_ADMIN_USERNAME and FIRST_ADMIN_EMAIL" in output
    assert "flask --app wsgi users create --username NAME --email ADDRESS --role admin" in output

    asked = {"FIRST_ADMIN_USERNAME": "operator", "FIRST_ADMIN_EMAIL": "operator@example.com"}
    status, output = run_entrypoint(entrypoint_env(url, **asked))
    assert status == 0, output
    assert "created the first administrator 'operator' with the password: " in output
    password = output.split("with the password: ", 1)[1].split()[0]
    assert len(password) >= 12
    assert output.rstrip().endswith(RAN)

    status, output = run_entrypoint(entrypoint_env(url, **asked))
    assert status == 0, output
    assert "an administrator exists already: FIRST_ADMIN_USERNAME changes nothing" in output
    assert password not in output and "no administrator yet" not in output

    env = entrypoint_env(url)
    users = subprocess.run([os.path.join(ROOT, ".venv", "bin", "flask"), "--app", "wsgi",
                            "users", "list", "--role", "admin"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60, check=True)
    assert users.stdout.split() == ["operator", "admin", "active"]


def test_a_first_administrator_without_an_address_is_refused_before_the_command(
        tmp_path: Path):
    env = entrypoint_env(f"sqlite:///{tmp_path / 'rpcc.db'}", FIRST_ADMIN_USERNAME="operator")
    status, output = run_entrypoint(env)
    assert status != 0
    assert "FIRST_ADMIN_USERNAME needs FIRST_ADMIN_EMAIL too" in output
    assert RAN not in output


def test_an_invalid_first_administrator_is_refused_with_the_reason(tmp_path: Path):
    env = entrypoint_env(f"sqlite:///{tmp_path / 'rpcc.db'}", FIRST_ADMIN_USERNAME="Bad Name",
                         FIRST_ADMIN_EMAIL="operator@example.com")
    status, output = run_entrypoint(env)
    assert status != 0
    assert "username:" in output
    assert RAN not in output
