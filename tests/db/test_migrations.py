"""The migrations create exactly the models: no pending autogenerate difference."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select

from app.models import Pool


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


def test_migrations_seed_the_default_pool(app, db):
    assert db.session.scalar(select(Pool.name)) == "default"


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
