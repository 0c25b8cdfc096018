"""A lease per node, in the database: two deployments never touch one node at once,
whether they run in two threads, two gunicorn workers or two app instances.

A Python lock would only cover one process.  A lease row (insert to take, delete to
give back, a deadline a crashed holder cannot extend) works the same on SQLite and
PostgreSQL.  Each operation is its own short transaction on its own connection, so it
never holds a database lock while the node is being worked on.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import Connection, delete, insert, update
from sqlalchemy.exc import IntegrityError, OperationalError

from app.errors import Conflict
from app.extensions import db
from app.models import NodeLock
from app.models.base import utcnow

logger = logging.getLogger(__name__)


class LockTimeout(Conflict):
    """Another deployment kept the node for longer than we were willing to wait."""


class LeaseLost(Conflict):
    """The lease expired while we held it (another holder may now own the node)."""


class NodeLease:
    """One holder's lease on one node, renewed at each step of the work."""

    def __init__(self, node_id: int, ttl: float) -> None:
        self.node_id = node_id
        self.ttl = ttl
        self.holder = uuid.uuid4().hex
        self._renewed = time.monotonic()

    def _try_take(self) -> bool:
        now = utcnow()
        try:
            with db.engine.begin() as conn:
                # A crashed holder's lease ends at its deadline.
                conn.execute(delete(NodeLock).where(NodeLock.node_id == self.node_id,
                                                    NodeLock.expires_at < now))
            with db.engine.begin() as conn:
                conn.execute(insert(NodeLock).values(
                    node_id=self.node_id, holder=self.holder, acquired_at=now,
                    expires_at=now + timedelta(seconds=self.ttl)))
            self._renewed = time.monotonic()
            return True
        except IntegrityError:
            return False
        except OperationalError as exc:
            # SQLite answers "database is locked" when writers pile up: wait and retry.
            if "locked" not in str(exc):
                raise
            return False

    def acquire(self, wait: float) -> float:
        """Wait (with backoff, not spinning) until the node is ours.

        :returns: seconds spent waiting.
        :raises LockTimeout: after ``wait`` seconds.
        """
        started = time.monotonic()
        delay = 0.01
        while not self._try_take():
            if time.monotonic() - started > wait:
                raise LockTimeout(f"node {self.node_id} is busy with another deployment")
            time.sleep(delay)
            delay = min(delay * 2, 0.25)
        return time.monotonic() - started

    def renew(self, conn: Connection | None = None, *, only_if_older_than: float = 0.0) -> None:
        """Push the deadline back (within the caller's transaction when given; skipped
        while the last renewal is younger than ``only_if_older_than`` seconds).

        :raises LeaseLost: when the lease is no longer ours.
        """
        if time.monotonic() - self._renewed < only_if_older_than:
            return
        if conn is None:
            with db.engine.begin() as own:
                self.renew(own)
            return
        result = conn.execute(
            update(NodeLock)
            .where(NodeLock.node_id == self.node_id, NodeLock.holder == self.holder)
            .values(expires_at=utcnow() + timedelta(seconds=self.ttl)))
        if result.rowcount != 1:
            raise LeaseLost(f"lost the lock on node {self.node_id}")
        self._renewed = time.monotonic()

    def release(self) -> None:
        with db.engine.begin() as conn:
            conn.execute(delete(NodeLock).where(NodeLock.node_id == self.node_id,
                                                NodeLock.holder == self.holder))


@contextmanager
def node_lease(node_id: int, *, ttl: float, wait: float) -> Iterator[NodeLease]:
    lease = NodeLease(node_id, ttl)
    lease.acquire(wait)
    try:
        yield lease
    finally:
        try:
            lease.release()
        except Exception:  # the lease then simply expires
            logger.exception("could not release the lock on node %s", node_id)
