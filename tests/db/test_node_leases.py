"""Node leases written inside a caller's transaction: what was rolled back is never
trusted (a renewal) nor forgotten (a release)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from app.models import NodeLease
from app.services.node_leases import NodeLeases
from tests import factories


def lock_rows(db) -> list[int]:
    db.session.expire_all()
    return list(db.session.scalars(select(NodeLease.node_id)))


def test_a_release_rolled_back_keeps_the_lease_and_is_retried(db):
    node = factories.make_node("leased")
    leases = NodeLeases(ttl=60)
    assert leases.try_take([node.id]) == {node.id}
    with pytest.raises(RuntimeError), db.engine.begin() as conn:
        leases.release([node.id], conn)
        raise RuntimeError("the outcome could not be written")
    assert leases.held == {node.id} and lock_rows(db) == [node.id]
    with db.engine.begin() as conn:
        done = leases.release([node.id], conn)
    done()
    assert leases.held == set() and lock_rows(db) == []


def test_a_renewal_rolled_back_is_not_trusted(db):
    node = factories.make_node("renewed")
    leases = NodeLeases(ttl=60)
    leases.try_take([node.id])
    time.sleep(0.05)
    before = leases.renewal_age()
    with pytest.raises(RuntimeError), db.engine.begin() as conn:
        leases.renew(conn)
        raise RuntimeError("rolled back")
    assert leases.renewal_age() >= before
    renewing = time.monotonic()
    with db.engine.begin() as conn:
        done = leases.renew(conn)
    assert leases.renewal_age() >= before  # not before the commit
    done()
    # Counted from the renewal, not from the take (at least 50 ms earlier), however
    # long the commit took.
    assert leases.renewal_age() <= time.monotonic() - renewing
    leases.release()
    assert lock_rows(db) == []
