"""Leases on nodes, in the database: two deployments never touch one node at once,
whether they run in two threads, two gunicorn workers or two app instances.

A Python lock would only cover one process.  A lease row (insert to take, delete to
give back, a deadline a crashed holder cannot extend) works the same on SQLite and
PostgreSQL.  Each operation is its own short transaction on its own connection, so it
never holds a database lock while the node is being worked on.

A rollout holds its nodes under one holder (:class:`NodeLeases`): it takes every free
node in one transaction and renews them all with one statement, so that a fleet costs
a handful of writes rather than several per node.  A holder that could not renew
within its time to live stops trusting its leases (:meth:`NodeLeases.check`) even if
it cannot tell the database so.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from app.errors import Conflict
from app.extensions import db
from app.models import NodeLease
from app.models.base import utcnow

logger = logging.getLogger(__name__)


def _nothing() -> None:
    """What :meth:`NodeLeases.renew` and :meth:`NodeLeases.release` return when there
    is nothing left to apply."""


class LeaseTimeout(Conflict):
    """Another deployment kept the node for longer than we were willing to wait."""


class LeaseLost(Conflict):
    """The lease expired while we held it (another holder may now own the node)."""


class NodeLeases:
    """One holder's leases on any number of nodes, renewed together."""

    #: Stop trusting a lease this long before its deadline, for the clock skew between
    #: this process and the database and the time a step takes to notice.
    MARGIN = 0.1

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.holder = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._held: set[int] = set()
        self._lost: set[int] = set()
        # When the deadline of every held lease was last pushed back (monotonic).
        self._renewed = time.monotonic()

    @property
    def held(self) -> set[int]:
        with self._lock:
            return set(self._held)

    def try_take(self, node_ids: Iterable[int]) -> set[int]:
        """Take every free one of these nodes in one transaction (crashed holders'
        leases end at their deadline); returns the nodes taken.  Under contention
        (another holder racing for one of them) it takes none, and the caller waits
        for each node with :meth:`acquire`."""
        wanted = sorted(set(node_ids) - self.held)
        if not wanted:
            return set()
        now = utcnow()
        started = time.monotonic()
        try:
            with db.engine.begin() as conn:
                conn.execute(delete(NodeLease).where(NodeLease.node_id.in_(wanted),
                                                    NodeLease.expires_at < now))
                busy = set(conn.scalars(select(NodeLease.node_id)
                                        .where(NodeLease.node_id.in_(wanted))))
                free = [node_id for node_id in wanted if node_id not in busy]
                if free:
                    deadline = now + timedelta(seconds=self.ttl)
                    conn.execute(insert(NodeLease), [
                        {"node_id": node_id, "holder": self.holder, "acquired_at": now,
                         "expires_at": deadline} for node_id in free])
        except IntegrityError:
            return set()
        except OperationalError as exc:
            # SQLite answers "database is locked" when writers pile up: wait and retry.
            if "locked" not in str(exc):
                raise
            return set()
        with self._lock:
            if not self._held:
                self._renewed = started
            # else the older leases' deadline, earlier, is the one to trust
            self._held.update(free)
        return set(free)

    def acquire(self, node_id: int, wait: float) -> float:
        """Wait (with backoff, not spinning) until ``node_id`` is ours.

        :returns: seconds spent waiting.
        :raises LeaseTimeout: after ``wait`` seconds.
        """
        started = time.monotonic()
        delay = 0.01
        while node_id not in self.try_take([node_id]):
            if time.monotonic() - started > wait:
                raise LeaseTimeout(f"node {node_id} is busy with another deployment")
            time.sleep(delay)
            delay = min(delay * 2, 0.25)
        return time.monotonic() - started

    def renew(self, conn: Connection | None = None, *,
              only_if_older_than: float = 0.0) -> Callable[[], None]:
        """Push every held lease's deadline back in one statement (skipped while the
        last renewal is younger than ``only_if_older_than`` seconds).  Leases found
        gone are marked lost (:meth:`check` then refuses them).

        Within the caller's transaction (``conn``), nothing changes here until the
        caller calls the returned function after its commit: a renewal rolled back
        must not be trusted."""
        with self._lock:
            held = sorted(self._held - self._lost)
            renewed = self._renewed
        if not held or time.monotonic() - renewed < only_if_older_than:
            return _nothing
        if conn is None:
            with db.engine.begin() as own:
                apply = self.renew(own)
            apply()
            return _nothing
        started = time.monotonic()
        result = conn.execute(
            update(NodeLease)
            .where(NodeLease.node_id.in_(held), NodeLease.holder == self.holder)
            .values(expires_at=utcnow() + timedelta(seconds=self.ttl)))
        lost: set[int] = set()
        if result.rowcount != len(held):
            ours = set(conn.scalars(select(NodeLease.node_id).where(
                NodeLease.node_id.in_(held), NodeLease.holder == self.holder)))
            lost = set(held) - ours
            logger.warning("lost the lease on nodes %s", sorted(lost))

        def done() -> None:
            with self._lock:
                self._lost |= lost
                self._renewed = started
        return done

    def renewal_age(self) -> float:
        """Seconds since every held lease's deadline was last pushed back."""
        with self._lock:
            return time.monotonic() - self._renewed

    def check(self, node_id: int) -> None:
        """:raises LeaseLost: unless the lease on ``node_id`` is ours and still within
            the deadline of its last renewal."""
        with self._lock:
            ok = (node_id in self._held and node_id not in self._lost
                  and time.monotonic() - self._renewed < self.ttl - self.MARGIN)
        if not ok:
            raise LeaseLost(f"lost the lease on node {node_id}")

    def release(self, node_ids: Iterable[int] | None = None,
                conn: Connection | None = None) -> Callable[[], None]:
        """Give back these nodes (default: all).  Within ``conn``'s transaction they
        stay ours until the caller calls the returned function after its commit, so a
        rolled-back release is retried, never forgotten."""
        with self._lock:
            doomed = sorted(self._held if node_ids is None else self._held & set(node_ids))

        def done() -> None:
            with self._lock:
                self._held -= set(doomed)
                self._lost -= set(doomed)
        if not doomed:
            return _nothing
        statement = delete(NodeLease).where(NodeLease.node_id.in_(doomed),
                                           NodeLease.holder == self.holder)
        if conn is None:
            with db.engine.begin() as own:
                own.execute(statement)
            done()
            return _nothing
        conn.execute(statement)
        return done


class OneNodeLease(NodeLeases):
    """One holder's lease on one node."""

    def __init__(self, node_id: int, ttl: float) -> None:
        super().__init__(ttl)
        self.node_id = node_id

    def acquire(self, wait: float) -> float:  # type: ignore[override]
        return super().acquire(self.node_id, wait)

    def renew(self, conn: Connection | None = None, *,
              only_if_older_than: float = 0.0) -> Callable[[], None]:
        """:raises LeaseLost: when the lease is no longer ours (checked at once without
            ``conn``; with it, once the caller applied the renewal)."""
        done = super().renew(conn, only_if_older_than=only_if_older_than)
        if conn is None:
            self.check(self.node_id)
        return done


@contextmanager
def node_lease(node_id: int, *, ttl: float, wait: float) -> Iterator[OneNodeLease]:
    lease = OneNodeLease(node_id, ttl)
    lease.acquire(wait)
    try:
        yield lease
    finally:
        try:
            lease.release()
        except Exception:  # the lease then simply expires
            logger.exception("could not release the lease on node %s", node_id)
