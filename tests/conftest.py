"""Layered fixtures: app -> db -> users -> clients, and the markers of each folder.

The database is created by the real migrations (``flask db upgrade``) once per run,
on SQLite by default or on the PostgreSQL named by ``TEST_DATABASE_URL``; each test
starts from empty tables.  Only tests whose fixtures reach ``app`` build it: the pure
ones never touch a database.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, g, request_started
from flask.testing import FlaskClient
from hypothesis import HealthCheck, settings
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

from app import create_app
from app.extensions import db as _db
from app.models import User
from tests import factories

pytest_plugins = ["tests.components", "tests.api_fuzz.figures"]

# Property tests check what is generated, never how fast: a deadline per example and
# the "too slow" health check are timings, and fail on a machine busy with other work.
settings.register_profile("rpcc", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("rpcc")

TESTS = Path(__file__).resolve().parent
#: What each folder holds; its name is the marker that selects it (``-m unit``).
KINDS = ("unit", "db", "integration", "e2e", "property", "api_fuzz")
#: Folders whose tests must never reach the app's database.
PURE_KINDS = ("unit", "property")
#: Added to every test whose fixtures reach the app's database: such tests run on
#: SQLite and on PostgreSQL; the others once.
APP_DATABASE = "app_database"
#: Folders whose modules start their servers once per module: with pytest-xdist
#: (``--dist loadgroup``) a module stays on one worker.
MODULE_KINDS = ("integration", "property")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its folder's kind, and with ``app_database`` when it uses
    the app's database.  A test in the wrong folder (a pure folder's test that reaches
    the database, a database test that never does) stops the run, since the runs of
    scripts/test-inner.sh select tests by these markers.

    For pytest-xdist's ``--dist loadgroup``: the browser journeys share one product
    and stay together on one worker, and so does each module of real servers."""
    misplaced = []
    for item in items:
        parts = Path(item.path).resolve().relative_to(TESTS).parts
        kind = parts[0] if len(parts) > 1 and parts[0] in KINDS else None
        uses_database = "app" in item.fixturenames
        if kind is not None:
            item.add_marker(kind)
        if uses_database:
            item.add_marker(APP_DATABASE)
        if kind == "e2e":
            item.add_marker(pytest.mark.xdist_group("e2e"))
        elif kind in MODULE_KINDS:
            item.add_marker(pytest.mark.xdist_group(Path(item.path).stem))
        if (kind in PURE_KINDS and uses_database) or (kind == "db" and not uses_database):
            misplaced.append(f"{item.nodeid} ({'uses' if uses_database else 'never uses'} "
                             "the database)")
    if misplaced:
        raise pytest.UsageError(
            "tests in the wrong folder: tests/unit and tests/property never reach the "
            "database, tests/db always does:\n  " + "\n  ".join(misplaced))


def database_url() -> str:
    """``TEST_DATABASE_URL`` (with pytest-xdist, a database of each worker's own on
    that server, named after the worker, since every session empties its tables),
    else a fresh SQLite file."""
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        path = os.path.join(tempfile.mkdtemp(prefix="rpcc-test-"), "test.db")
        return f"sqlite:///{path}"
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return url
    parsed = make_url(url)
    return parsed.set(database=f"{parsed.database}_{worker}").render_as_string(
        hide_password=False)


def create_worker_database(url: str) -> None:
    """Create a worker's own PostgreSQL database (see :func:`database_url`) through
    ``TEST_DATABASE_URL``'s, unless it exists from an earlier run."""
    name = make_url(url).database
    server = create_engine(os.environ["TEST_DATABASE_URL"], isolation_level="AUTOCOMMIT",
                           poolclass=NullPool)
    try:
        with server.connect() as conn:
            if not conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :name"),
                               {"name": name}):
                conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        server.dispose()


def make_app(**overrides: Any) -> Flask:
    """An app on the session's database; tests that need CSRF or rate limits on
    build their own with this."""
    settings = {
        "SQLALCHEMY_DATABASE_URI": _DATABASE_URL,
        "WTF_CSRF_ENABLED": False,
        "RATELIMIT_ENABLED": False,
        "SERVER_NAME": "localhost",
    }
    settings.update(overrides)
    return create_app("testing", settings)


_DATABASE_URL = database_url()


def reset_database() -> None:
    """Empty every table and restore the rows the migrations seed."""
    tables = [t.name for t in reversed(_db.metadata.sorted_tables)]
    if _db.engine.dialect.name == "postgresql":
        _db.session.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
    else:
        for name in tables:
            _db.session.execute(text(f"DELETE FROM {name}"))
    _db.session.execute(text(
        "INSERT INTO pools (name, description, created_at, updated_at) "
        "VALUES ('default', 'Default pool', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
    _db.session.commit()


@pytest.fixture(scope="session")
def app() -> Iterator[Flask]:
    from flask_migrate import upgrade

    if os.environ.get("TEST_DATABASE_URL") and os.environ.get("PYTEST_XDIST_WORKER"):
        create_worker_database(_DATABASE_URL)
    application = make_app()
    with application.app_context():
        if _db.engine.dialect.name == "postgresql":
            _db.session.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
            _db.session.commit()
        upgrade()
    yield application


@pytest.fixture()
def db(app: Flask) -> Iterator[Any]:
    from app.executor import executor

    with app.app_context():
        # A previous test's background work (a notice's delivery, a rollout's end)
        # still writing would deadlock with the emptying of its tables.
        executor.join_all(timeout=30)
        reset_database()
        yield _db
        _db.session.rollback()
        _db.session.remove()


@pytest.fixture(autouse=True)
def fresh_user_per_request(request: pytest.FixtureRequest) -> Iterator[None]:
    """Test requests reuse the ``db`` fixture's app context and so its ``g``, where
    Flask-Login caches the signed-in user; forget it so each request loads its own.
    Tests that never ask for the app do not get one from here."""
    if "app" not in request.fixturenames:
        yield
        return

    def forget(sender: Flask, **extra: Any) -> None:
        g.pop("_login_user", None)

    with request_started.connected_to(forget, request.getfixturevalue("app")):
        yield


@pytest.fixture()
def admin(db: Any) -> User:
    return factories.make_user("admin", "admin")


@pytest.fixture()
def alice(db: Any) -> User:
    return factories.make_user("client", "alice")


@pytest.fixture()
def bob(db: Any) -> User:
    return factories.make_user("client", "bob")


@pytest.fixture()
def client(app: Flask, db: Any) -> FlaskClient:
    return app.test_client()


def login(client: FlaskClient, user: User, password: str = factories.PASSWORD) -> None:
    response = client.post("/auth/login", data={"username": user.username, "password": password})
    assert response.status_code == 302, response.get_data(as_text=True)


def api_headers(user: User) -> dict[str, str]:
    from app.services import tokens

    _, token = tokens.create_token(user, "test")
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture()
def admin_client(app: Flask, admin: User) -> FlaskClient:
    c = app.test_client()
    login(c, admin)
    return c


@pytest.fixture()
def alice_client(app: Flask, alice: User) -> FlaskClient:
    c = app.test_client()
    login(c, alice)
    return c
