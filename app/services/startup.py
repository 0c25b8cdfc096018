"""What an instance does before it serves: wait until the database answers, bring
its schema up to date, and make the first administrator when the operator asks.

Several instances (replicas of one container, or a web and a worker container) may
start at the same time on one database.  Migrations and the first administrator are
done under one lock across all of them, so the first to take it does the work and the
others find it done.  On PostgreSQL the lock is a session-level advisory lock on a
connection of its own, released by the server if the holder dies; on an SQLite file
it is an ``flock`` on a file beside the database (its users share one machine).
"""

from __future__ import annotations

import fcntl
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import flask_migrate
from alembic.migration import MigrationContext
from sqlalchemy import URL, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from app.errors import ServiceError
from app.extensions import db
from app.models import User
from app.services import users

# Advisory lock keys are two int4: the product's namespace (the scheduler's lease
# uses it too, with another key) and one for schema work.
LOCK_NAMESPACE = 0x52504343  # "RPCC"
MIGRATION_LOCK_KEY = zlib.crc32(b"schema-migration") & 0x7FFFFFFF
# Seconds one connection attempt may take: a host that drops packets would otherwise
# hold an attempt for the kernel's TCP timeout, minutes.
CONNECT_TIMEOUT = 5


class DatabaseUnreachable(ServiceError):
    """The database did not answer within the attempts the operator allowed."""

    code = "database_unreachable"
    status = 503


@dataclass(frozen=True)
class SchemaUpgrade:
    """The schema's revision before and after an upgrade; equal when another
    instance had already done it, or nothing was due."""

    before: str | None
    after: str | None

    @property
    def changed(self) -> bool:
        return self.before != self.after


def describe(url: URL) -> str:
    """Where the database is, for messages: never the password."""
    if url.get_backend_name() == "sqlite":
        return f"sqlite {url.database or 'in memory'}"
    where = f"{url.host or 'local socket'}:{url.port or 5432}"
    return f"{url.get_backend_name()} at {where}, database {url.database}"


def _reason(error: DBAPIError) -> str:
    """The driver's own words on one line ("connection refused", "password
    authentication failed"), without SQLAlchemy's statement and help link."""
    return " ".join(str(error.orig).split())


def wait_for_database(attempts: int, interval: float,
                      on_retry: Callable[[int, str], None]) -> None:
    """Connect until the database answers a query, at most ``attempts`` times,
    ``interval`` seconds apart; ``on_retry(attempt, reason)`` after each failure
    that is followed by another attempt.

    :raises DatabaseUnreachable: naming the database and the last failure's reason.
    """
    url = db.engine.url
    connect_args = {"connect_timeout": CONNECT_TIMEOUT} \
        if url.get_backend_name() == "postgresql" else {}
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    reason = ""
    try:
        for attempt in range(1, attempts + 1):
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                return
            except DBAPIError as error:
                reason = _reason(error)
            if attempt < attempts:
                on_retry(attempt, reason)
                time.sleep(interval)
    finally:
        engine.dispose()
    raise DatabaseUnreachable(
        f"the database ({describe(url)}) did not answer after {attempts} attempt"
        f"{'' if attempts == 1 else 's'}, {interval:g} s apart: {reason}")


@contextmanager
def _advisory_lock(url: URL, on_wait: Callable[[], None]) -> Iterator[None]:
    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT",
                           connect_args={"connect_timeout": CONNECT_TIMEOUT,
                                         "application_name": "rpcc-startup"})
    keys = {"ns": LOCK_NAMESPACE, "key": MIGRATION_LOCK_KEY}
    try:
        with engine.connect() as conn:
            if not conn.execute(text("SELECT pg_try_advisory_lock(:ns, :key)"), keys).scalar():
                on_wait()
                conn.execute(text("SELECT pg_advisory_lock(:ns, :key)"), keys)
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:ns, :key)"), keys)
    finally:
        engine.dispose()


@contextmanager
def _file_lock(path: str, on_wait: Callable[[], None]) -> Iterator[None]:
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def schema_lock(on_wait: Callable[[], None]) -> Iterator[None]:
    """Held by one starting instance at a time across the deployment;
    ``on_wait()`` once when another holds it and we wait."""
    url = db.engine.url
    if url.get_backend_name() == "postgresql":
        with _advisory_lock(url, on_wait):
            yield
    elif url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        with _file_lock(f"{url.database}.startup.lock", on_wait):
            yield
    else:
        yield  # an in-memory database belongs to this one process


def schema_revision() -> str | None:
    """The revision the database is at (heads joined by commas), None before the
    first migration."""
    with db.engine.connect() as conn:
        heads = MigrationContext.configure(conn).get_current_heads()
    return ",".join(sorted(heads)) or None


def upgrade_schema(on_wait: Callable[[], None]) -> SchemaUpgrade:
    """Apply the migrations that are due, once across instances starting together."""
    with schema_lock(on_wait):
        before = schema_revision()
        flask_migrate.upgrade()
        return SchemaUpgrade(before, schema_revision())


def has_admin() -> bool:
    return bool(users.all_users("admin"))


def create_first_admin(username: str, email: str,
                       on_wait: Callable[[], None]) -> tuple[User, str | None] | None:
    """Create an administrator with a generated password (returned, to be shown
    once) when there is none yet; None when one exists, so that an instance
    restarted with the same request changes nothing.

    :raises ValidationError: for an invalid username or e-mail address.
    """
    with schema_lock(on_wait):
        if has_admin():
            return None
        return users.create_user(None, {"username": username, "email": email, "role": "admin"})
