"""The app's own processes (gunicorn, the flask CLI), the databases and memcached they
share, started on loopback with tests/processes.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.processes import free_port, listening, require_binary, start, stop


@pytest.fixture(scope="session")
def memcached() -> Iterator[str]:
    """A real memcached on loopback; yields its ``memcached://`` URI."""
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    process = start([require_binary("memcached"), "-l", "127.0.0.1", "-p", str(port), "-U",
                     "0", "-m", "64", *user], ready=listening(("127.0.0.1", port)))
    try:
        yield f"memcached://127.0.0.1:{port}"
    finally:
        stop(process)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def app_env(database_url: str, **extra: str) -> dict[str, str]:
    """Environment for an app process of our own (gunicorn or the flask CLI)."""
    from cryptography.fernet import Fernet

    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASK_", "APP_"))}
    env.update({
        "APP_ENV": "development",
        "DATABASE_URL": database_url,
        "SECRET_KEY": "integration-secret",
        "ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "PYTHONDONTWRITEBYTECODE": "1",
        # Test backends live on loopback; names are never sent to a DNS server.
        "BACKEND_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128",
        "BACKEND_RESOLVERS": "off",
    })
    env.update(extra)
    return env


POSTGRES_ADMIN_URL = "TEST_POSTGRES_ADMIN_URL"


@contextmanager
def postgres_database(prefix: str, migrated: bool = True) -> Iterator[str]:
    """A database of its own on the PostgreSQL server that scripts/test-inner.sh
    starts for both suite runs (named uniquely, dropped afterwards), for tests that
    run several app processes on one database; migrated unless ``migrated`` is
    false (for tests of the migration itself)."""
    from sqlalchemy import create_engine, make_url, text
    from sqlalchemy.pool import NullPool

    admin_url = os.environ.get(POSTGRES_ADMIN_URL)
    if not admin_url:
        pytest.fail(f"{POSTGRES_ADMIN_URL} is not set: run the tests through "
                    "scripts/test-inner.sh (or make test), which starts PostgreSQL")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        if migrated:
            flask_cli(app_env(url), "db", "upgrade")
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def flask_cli(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [os.path.join(ROOT, ".venv", "bin", "flask"), "--app", "wsgi", *args],
        cwd=ROOT, env=env, input=stdin, capture_output=True, text=True, timeout=60,
    )
    if result.returncode != 0:
        raise RuntimeError(f"flask {' '.join(args)} failed: {result.stderr}{result.stdout}")
    return result.stdout


class AppServer:
    """A real gunicorn process serving the app on a loopback address; its output goes
    to a log of its own, quoted if it fails to start."""

    def __init__(self, env: dict[str, str], host: str = "127.0.0.1", workers: int = 1,
                 threads: int = 2) -> None:
        self.host, self.port = host, free_port(host)
        self.root = Path(tempfile.mkdtemp(prefix="rpcc-gunicorn-"))
        try:
            self.process = start(
                [os.path.join(ROOT, ".venv", "bin", "gunicorn"), "--bind",
                 f"{host}:{self.port}", "--workers", str(workers), "--threads", str(threads),
                 "wsgi:app"],
                ready=listening((host, self.port)), log=self.root / "gunicorn.log",
                timeout=20, cwd=ROOT, env=env)
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        stop(self.process)
        shutil.rmtree(self.root, ignore_errors=True)
