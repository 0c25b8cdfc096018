"""Layered fixtures: app -> db -> users -> clients.

The database is created by the real migrations (``flask db upgrade``) once per run,
on SQLite by default or on the PostgreSQL named by ``TEST_DATABASE_URL``; each test
starts from empty tables.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, g, request_started
from flask.testing import FlaskClient
from sqlalchemy import text

from app import create_app
from app.extensions import db as _db
from app.models import User
from tests import factories

pytest_plugins = ["tests.components"]


def database_url() -> str:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return url
    path = os.path.join(tempfile.mkdtemp(prefix="rpcc-test-"), "test.db")
    return f"sqlite:///{path}"


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

    application = make_app()
    with application.app_context():
        if _db.engine.dialect.name == "postgresql":
            _db.session.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
            _db.session.commit()
        upgrade()
    yield application


@pytest.fixture()
def db(app: Flask) -> Iterator[Any]:
    with app.app_context():
        reset_database()
        yield _db
        _db.session.rollback()
        _db.session.remove()


@pytest.fixture(autouse=True)
def fresh_user_per_request(app: Flask) -> Iterator[None]:
    """Test requests reuse the ``db`` fixture's app context and so its ``g``, where
    Flask-Login caches the signed-in user; forget it so each request loads its own."""

    def forget(sender: Flask, **extra: Any) -> None:
        g.pop("_login_user", None)

    with request_started.connected_to(forget, app):
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
