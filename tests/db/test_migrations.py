"""The migrations create exactly the models (no pending autogenerate difference) and
the rows the product starts with."""

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask import Flask
from sqlalchemy import create_engine, inspect, make_url, select, text
from sqlalchemy.pool import NullPool

from tests.components import app_env, flask_cli, postgres_database


def test_upgrade_from_empty_matches_the_models(app, db):
    # The session fixture built this database with `flask db upgrade` from empty.
    with db.engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "render_as_batch": True}
        )
        diff = compare_metadata(context, db.metadata)
    assert diff == []


def test_every_model_table_exists(app, db):
    tables = set(inspect(db.engine).get_table_names())
    assert set(db.metadata.tables) <= tables
    assert "alembic_version" in tables


@pytest.fixture()
def migrated_from_empty(app: Flask) -> Iterator[str]:
    """A new database of the session's kind, empty until ``flask db upgrade`` ran on it
    in a process of its own: nothing of the test session (which re-creates the seeded
    rows after emptying its tables) ever wrote to it."""
    if make_url(app.config["SQLALCHEMY_DATABASE_URI"]).get_backend_name() == "postgresql":
        with postgres_database("rpcc_migrations") as url:
            yield url
        return
    directory = tempfile.mkdtemp(prefix="rpcc-migrations-")
    url = f"sqlite:///{os.path.join(directory, 'app.db')}"
    try:
        flask_cli(app_env(url), "db", "upgrade")
        yield url
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_migrations_seed_the_default_pool(migrated_from_empty):
    engine = create_engine(migrated_from_empty, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            pools = connection.execute(text("SELECT name, description FROM pools")).all()
    finally:
        engine.dispose()
    assert [tuple(row) for row in pools] == [("default", "Default pool")]


def test_foreign_keys_are_enforced_on_every_database(app, db, admin):
    """SQLite only honours ON DELETE rules with foreign keys switched on: deleting a
    node takes its config versions with it, as on PostgreSQL."""
    from sqlalchemy import func

    from app.models import ConfigVersion
    from app.services import nodes
    from tests import factories

    node = factories.make_node("cascade")
    factories.make_version(node)
    nodes.delete_node(admin, node.id)
    db.session.expire_all()
    assert db.session.scalar(select(func.count()).select_from(ConfigVersion)) == 0
