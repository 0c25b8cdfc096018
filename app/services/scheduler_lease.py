"""The scheduler's lease: which one process of the whole deployment runs jobs.

On PostgreSQL the lease is a session-level advisory lock on a connection of its own:
it ends when that connection or the process dies.  SQLite has no such lock, so there
the lease is a row taken and renewed by conditional UPDATEs with an expiry.  On both,
the leader writes a heartbeat into that row, which ``/health`` and the Jobs page show.
"""

from __future__ import annotations

import logging
import zlib
from datetime import timedelta
from typing import Protocol

from flask import Flask
from sqlalchemy import URL, Connection, Engine, create_engine, insert, or_, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import NullPool

from app.extensions import db
from app.models import SchedulerLease
from app.models.base import utcnow
from app.services import jobs as job_service

log = logging.getLogger(__name__)



class Lease(Protocol):
    def hold(self) -> bool:
        """Take the lease or keep it, and write the heartbeat; whether we lead now."""

    def release(self) -> None:
        """Give the lease back so that another process takes over at once."""


def _write_lease_row(holder: str, ttl: float) -> bool:
    """Take the lease row if it is ours or has expired; a missing row is created.
    One conditional UPDATE, so two processes can never both succeed."""
    now = utcnow()
    values = {"holder": holder, "expires_at": now + timedelta(seconds=ttl), "heartbeat_at": now}
    with db.engine.begin() as conn:
        result = conn.execute(update(SchedulerLease).where(
            SchedulerLease.name == job_service.LEASE_NAME,
            or_(SchedulerLease.holder == holder, SchedulerLease.expires_at < now),
        ).values(**values))
        if result.rowcount == 1:
            return True
    try:
        with db.engine.begin() as conn:
            conn.execute(insert(SchedulerLease).values(name=job_service.LEASE_NAME, **values))
        return True
    except IntegrityError:
        return False  # the row exists and someone else's lease on it still runs


def _expire_lease_row(holder: str) -> None:
    with db.engine.begin() as conn:
        conn.execute(update(SchedulerLease).where(
            SchedulerLease.name == job_service.LEASE_NAME, SchedulerLease.holder == holder,
        ).values(expires_at=utcnow()))


class RowLease:
    """The lease as a row with an expiry: a crashed holder stops renewing and loses
    it ``ttl`` seconds after its last renewal."""

    def __init__(self, holder: str, ttl: float) -> None:
        self.holder, self.ttl = holder, ttl

    def hold(self) -> bool:
        return _write_lease_row(self.holder, self.ttl)

    def release(self) -> None:
        _expire_lease_row(self.holder)


# Advisory lock keys are two int4: one for this product, one for the lease's name.
_LOCK_NAMESPACE = 0x52504343  # "RPCC"
_LOCK_KEY = zlib.crc32(job_service.LEASE_NAME.encode()) & 0x7FFFFFFF


class AdvisoryLease:
    """A PostgreSQL session-level advisory lock held on a dedicated connection.

    The server releases it when that connection ends, whether the process exits,
    crashes or loses the network; we notice at the next renewal (the lock is no
    longer ours) and stop running jobs until we win it again.  The lease row then only
    carries the heartbeat, written by whoever holds the lock."""

    def __init__(self, holder: str, ttl: float, url: URL) -> None:
        self.holder, self.ttl, self.url = holder, ttl, url
        self._engine: Engine | None = None
        self._conn: Connection | None = None

    def _connect(self) -> Connection:
        if self._engine is None:
            # Keepalives end a connection to a vanished server instead of leaving
            # the lock query hanging.
            self._engine = create_engine(
                self.url, poolclass=NullPool, isolation_level="AUTOCOMMIT",
                connect_args={"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 10,
                              "keepalives_interval": 5, "keepalives_count": 3,
                              "application_name": "rpcc-scheduler"})
        return self._engine.connect()

    def _still_ours(self) -> bool:
        """Ask the server rather than trusting the connection object, which may have
        quietly reconnected (a new session holds no lock)."""
        assert self._conn is not None
        try:
            return bool(self._conn.execute(text(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
                "AND granted AND pid = pg_backend_pid() AND classid = :ns "
                "AND objid = :key AND objsubid = 2)"),
                {"ns": _LOCK_NAMESPACE, "key": _LOCK_KEY}).scalar())
        except Exception:  # noqa: BLE001 - any failure means the session is gone
            log.warning("scheduler lock connection failed", exc_info=True)
            return False

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - it is being thrown away
                log.debug("closing the scheduler lock connection failed", exc_info=True)
            self._conn = None

    def hold(self) -> bool:
        if self._conn is not None and not self._still_ours():
            log.warning("scheduler lock lost: %s no longer leads", self.holder)
            self._drop()
        if self._conn is None:
            conn = self._connect()
            try:
                taken = conn.execute(text("SELECT pg_try_advisory_lock(:ns, :key)"),
                                     {"ns": _LOCK_NAMESPACE, "key": _LOCK_KEY}).scalar()
            except Exception:
                conn.close()
                raise
            if not taken:
                conn.close()
                return False
            self._conn = conn
        # The lock decides; the row only reports, so it is overwritten unconditionally.
        with db.engine.begin() as conn:
            result = conn.execute(update(SchedulerLease).where(
                SchedulerLease.name == job_service.LEASE_NAME).values(
                holder=self.holder, heartbeat_at=utcnow(),
                expires_at=utcnow() + timedelta(seconds=self.ttl)))
        if result.rowcount == 0:
            _write_lease_row(self.holder, self.ttl)
        return True

    def release(self) -> None:
        if self._conn is None:
            return
        try:
            _expire_lease_row(self.holder)
            self._conn.execute(text("SELECT pg_advisory_unlock(:ns, :key)"),
                               {"ns": _LOCK_NAMESPACE, "key": _LOCK_KEY})
        finally:
            self._drop()
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None


def make_lease(app: Flask, holder: str) -> Lease:
    with app.app_context():
        engine = db.engine
        ttl = app.config["SCHEDULER_LEASE_TTL"]
        if engine.dialect.name == "postgresql":
            return AdvisoryLease(holder, ttl, engine.url)
        return RowLease(holder, ttl)
