"""A rollout's writes to the database, batched: a fleet costs a handful of statements
per interval, not a dozen per node.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from flask import Flask
from sqlalchemy import bindparam, update

from app.extensions import db
from app.models import (
    DeploymentStatus,
    Node,
    NodeDeployment,
    NodeStatus,
)
from app.models.base import utcnow
from app.services.node_leases import NodeLeases

logger = logging.getLogger(__name__)

# How often a rollout writes its nodes' progress (one transaction for all of them).
PROGRESS_INTERVAL = 0.1


class SiteOutcomes:
    """What a rollout's nodes found about single sites, written once it ends: the
    versions a node refused (set aside), and what verification saw."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # site id -> (version, the owner's sentence, what the node printed)
        self.refused: dict[int, tuple[int, str, str]] = {}
        # site id -> warning ("" when every node that asked got a good answer)
        self.warnings: dict[int, str] = {}

    def refuse(self, site_id: int, version: int, reason: str, output: str) -> None:
        with self._lock:
            self.refused.setdefault(site_id, (version, reason, output))

    def verified(self, warnings: dict[int, str]) -> None:
        with self._lock:
            for site_id, warning in warnings.items():
                if warning or site_id not in self.warnings:
                    self.warnings[site_id] = warning


class Recorder:
    """A rollout's writes to the database, batched: the deployments' progress and
    outcome, their nodes' state, and the renewal and release of the rollout's node
    leases, every ``interval`` seconds in one short transaction from one thread.

    Fifty nodes each writing their every step in its own transaction made the
    database's write lock the bottleneck of a rollout.  Batched, progress shows up to
    ``interval`` late; an outcome is written before its node's lease is given back,
    in the same transaction, so whoever takes the node next sees it.
    """

    def __init__(self, app: Flask, leases: NodeLeases, interval: float = PROGRESS_INTERVAL,
                 name: str = "recorder") -> None:
        self.app = app
        self.leases = leases
        self.interval = interval
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._deployments: dict[int, dict[str, Any]] = {}
        self._nodes: dict[int, dict[str, Any]] = {}
        self._release: set[int] = set()
        self.sites = SiteOutcomes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def update(self, deployment_id: int, **values: Any) -> None:
        with self._lock:
            self._deployments.setdefault(deployment_id, {}).update(values)

    def finish(self, deployment_id: int, node_id: int | None, status: DeploymentStatus,
               error: str, steps: list[dict[str, Any]], *, drifted: bool = False) -> None:
        """The deployment's outcome; the node's lease goes back with it."""
        node_values: dict[str, Any] = {}
        if status == DeploymentStatus.SUCCEEDED:
            node_values = {"last_seen": utcnow(), "drifted": False, "drift_details": "",
                           "status": NodeStatus.ONLINE}
        elif drifted:
            node_values = {"drifted": True, "drift_details": error[:2000]}
        with self._lock:
            self._deployments.setdefault(deployment_id, {}).update(
                status=status, error=error[:4000], steps=steps, step="", finished_at=utcnow())
            if node_id is not None:
                if node_values:
                    self._nodes.setdefault(node_id, {}).update(node_values)
                self._release.add(node_id)

    def flush(self) -> None:
        """Write what is pending (and renew the leases when due); on failure it stays
        pending for the next attempt."""
        with self._flushing:
            with self._lock:
                deployments, self._deployments = self._deployments, {}
                nodes, self._nodes = self._nodes, {}
                release, self._release = self._release, set()
            if not (deployments or nodes or release) and not self._renewal_due():
                return
            try:
                with db.engine.begin() as conn:
                    renewed = self.leases.renew(conn, only_if_older_than=self.leases.ttl / 3)
                    update_many(conn, NodeDeployment, deployments)
                    update_many(conn, Node, nodes, Node.status != NodeStatus.DRAINING)
                    released = self.leases.release(release, conn) if release else None
                # The leases' own view changes only once the transaction committed.
                renewed()
                if released is not None:
                    released()
            except Exception:
                with self._lock:
                    for key, values in deployments.items():
                        self._deployments[key] = {**values, **self._deployments.get(key, {})}
                    for key, values in nodes.items():
                        self._nodes[key] = {**values, **self._nodes.get(key, {})}
                    self._release |= release
                raise

    def close(self) -> None:
        """Stop the thread, write everything, give back every lease."""
        self._stop.set()
        self._thread.join()
        for attempt in range(3):
            try:
                self.flush()
                break
            except Exception:
                logger.exception("could not record a rollout's progress (attempt %d)",
                                 attempt + 1)
                time.sleep(0.2 * (attempt + 1))
        with self._lock:
            unrecorded = set(self._release)
        try:
            # A lease goes back with its node's outcome; a node whose outcome could
            # not be written keeps it until it expires.
            self.leases.release(self.leases.held - unrecorded)
        except Exception:  # they then simply expire
            logger.exception("could not release a rollout's node locks")

    def _renewal_due(self) -> bool:
        return bool(self.leases.held) and self.leases.renewal_age() >= self.leases.ttl / 3

    def _run(self) -> None:
        with self.app.app_context():
            while not self._stop.wait(self.interval):
                try:
                    self.flush()
                except Exception:
                    logger.exception("could not record a rollout's progress; retrying")


def update_many(conn: Any, model: Any, rows: dict[int, dict[str, Any]],
                 *conditions: Any) -> None:
    """UPDATE rows by id, one executemany per set of columns."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row_id, values in rows.items():
        groups.setdefault(tuple(sorted(values)), []).append(
            {"row_id": row_id, **{f"v_{key}": value for key, value in values.items()}})
    for keys, params in groups.items():
        statement = (update(model).where(model.id == bindparam("row_id"), *conditions)
                     .values({key: bindparam(f"v_{key}") for key in keys}))
        conn.execute(statement, params)
