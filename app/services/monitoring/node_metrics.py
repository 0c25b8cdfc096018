"""The ``node_metrics`` job: every enabled node's Glances, read once a minute.

Nodes are read a few at once (``METRICS_PARALLELISM`` threads) and each has
``METRICS_NODE_TIMEOUT`` seconds from the moment its read starts: a node that
hangs costs the sweep that much and holds one thread, never the whole run.  The
threads only talk to the nodes; everything the database sees is written once at the
end of the sweep, in the job's own session: one multi-row insert of raw samples and
one update of the nodes' ``glances_api``, ``metrics_error`` and ``metrics_at``.

A node without Glances is a state, not an error: its ``metrics_error`` says why in
words and the log says so once when the state changes (not every minute).

The same read takes the proxy's own counters (active connections, requests served;
``proxy_status``) within the node's remaining time; the request rate is the counter's
growth since this process's previous read of that node, so the first sweep after a
start, or after the proxy restarted, has none.  A node whose proxy counters cannot be
read still gets its Glances figures, and the other way round.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from flask import Flask, current_app
from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.orm import joinedload

from app.connector import SSHConnectionPool, SSHTarget
from app.errors import ValidationError
from app.extensions import db, ssh
from app.models import Node, NodeMetric, User
from app.models.base import as_utc, utcnow
from app.services.common import MAX_PER_PAGE, Page, get_or_404, require_admin
from app.services.deployments import ssh_target
from app.services.monitoring import glances, proxy_status
from app.services.monitoring.glances import GlancesError, Sample
from app.services.monitoring.retention import FIVE_MINUTES, HOUR, RAW, bucket_start

log = logging.getLogger(__name__)

#: ``Node.metrics_error`` holds at most this many characters.
ERROR_LENGTH = 300


@dataclass(frozen=True)
class Probe:
    """What a worker thread needs to read one node, taken from its row beforehand
    (the threads never touch the database session)."""

    node_id: int
    name: str
    endpoint: glances.Endpoint
    target: SSHTarget
    remembered: str | None
    previous_error: str
    status: proxy_status.StatusSource


@dataclass(frozen=True)
class Reading:
    """One node's outcome: a sample and the API version, or why there is none."""

    node_id: int
    at: datetime
    version: str | None = None
    sample: Sample | None = None
    error: str = ""
    absent: bool = False
    proxy: proxy_status.ProxyStatus | None = None

    def columns(self, previous: proxy_status.ProxyStatus | None) -> dict[str, Any] | None:
        """The raw sample's columns, the request rate measured since ``previous``
        counters; None when the node told nothing."""
        if self.sample is None and self.proxy is None:
            return None
        columns: dict[str, Any] = self.sample.columns() if self.sample is not None else {}
        columns["connections"] = None
        columns["requests_per_second"] = None
        if self.proxy is not None:
            columns["connections"] = float(self.proxy.active_connections)
            columns["requests_per_second"] = proxy_status.requests_per_second(previous,
                                                                               self.proxy)
        return columns


# Each node's last proxy counters read by this process: what a request rate is
# measured from.
_COUNTERS: dict[int, proxy_status.ProxyStatus] = {}
_COUNTERS_LOCK = threading.Lock()


def probe(node: Node, default_port: int) -> Probe:
    return Probe(node.id, node.name, glances.endpoint(node.glances_url, default_port),
                 ssh_target(node), node.glances_api, node.metrics_error,
                 proxy_status.status_source(node))


def read_node(app: Flask, pool: SSHConnectionPool, node: Probe, timeout: float) -> Reading:
    """Read one node's Glances within ``timeout`` seconds.  Runs in a worker thread,
    inside an app context because a first SSH contact pins the node's host key."""
    started, deadline = utcnow(), time.monotonic() + timeout
    transport: glances.Transport
    with app.app_context():
        try:
            if node.endpoint.kind == "http":
                transport = glances.HttpTransport(node.endpoint.base_url, deadline)
            else:
                transport = glances.TunnelTransport(pool, node.target, node.endpoint.host,
                                                    node.endpoint.port, deadline)
            version, sample = glances.read(transport, node.remembered)
            reading = Reading(node.node_id, started, version=version, sample=sample)
        except GlancesError as exc:
            reading = Reading(node.node_id, started, error=str(exc), absent=exc.absent)
        except Exception as exc:  # noqa: BLE001 - one node's surprise must not end the sweep
            log.exception("metrics of node %s: unexpected failure", node.node_id)
            reading = Reading(node.node_id, started, error=f"unexpected failure: "
                              f"{type(exc).__name__}: {exc}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return reading
        try:
            counters = proxy_status.read_proxy_status(node.status, app, timeout=remaining)
        except proxy_status.ProxyStatusUnavailable as exc:
            log.debug("node %s: no proxy counters: %s", node.node_id, exc)
            return reading
        return replace(reading, proxy=counters)


def sweep(app: Flask, pool: SSHConnectionPool, probes: list[Probe], *, workers: int,
          timeout: float) -> list[Reading]:
    """Read every node, ``workers`` at a time; a node still running ``timeout``
    seconds after it started is given up (its thread ends on its own timeouts).
    Waits sleep until a read ends or the next running one is due: no polling."""
    running: dict[int, float] = {}  # node id -> when its read started, while it runs

    def work(node: Probe) -> Reading:
        running[node.node_id] = time.monotonic()
        try:
            return read_node(app, pool, node, timeout)
        finally:
            running.pop(node.node_id, None)

    executor = ThreadPoolExecutor(max_workers=max(1, min(workers, len(probes))),
                                  thread_name_prefix="rpcc-metrics")
    readings: list[Reading] = []
    try:
        futures = {p.node_id: executor.submit(work, p) for p in probes}
        pending = {future: node_id for node_id, future in futures.items()}
        while pending:
            # Reads still awaited (a given-up one may still be running).
            awaited = [(node_id, since) for node_id, since in list(running.items())
                       if futures[node_id] in pending]
            due = min((since for _, since in awaited), default=time.monotonic()) + timeout
            done, _ = wait(pending, timeout=max(0.0, due - time.monotonic()),
                           return_when=FIRST_COMPLETED)
            for future in done:
                del pending[future]
                readings.append(future.result())
            now = time.monotonic()
            for node_id, since in awaited:
                if now - since > timeout and futures[node_id] in pending:
                    del pending[futures[node_id]]
                    readings.append(Reading(node_id, utcnow(), error=(
                        f"Glances did not answer within {timeout:g} s")))
    finally:
        # Given-up reads finish in the background; nothing waits for them.
        executor.shutdown(wait=False, cancel_futures=True)
    return readings


def _node_changes(node: Probe, reading: Reading) -> dict[str, Any]:
    """The node's new metrics columns, logging a change of state once."""
    error = reading.error[:ERROR_LENGTH]
    if error != node.previous_error:
        if error:
            log.warning("node %s (%s): no metrics: %s", node.node_id, node.name, error)
        else:
            log.info("node %s (%s): metrics again (Glances API %s)", node.node_id, node.name,
                     reading.version)
    changes: dict[str, Any] = {"id": node.node_id, "metrics_error": error}
    if reading.sample is not None:
        changes.update(glances_api=reading.version, metrics_at=reading.at)
    elif reading.absent:
        changes["glances_api"] = None
    return changes


def record(probes: Iterable[Probe], readings: Iterable[Reading]) -> tuple[int, int, int]:
    """Store the readings of the nodes ``probes`` describe: raw samples in one
    insert, the nodes' state in one update.  Returns how many nodes gave metrics,
    had no Glances, failed otherwise."""
    by_id = {node.node_id: node for node in probes}
    rows, changes = [], []
    counts = [0, 0, 0]
    for reading in readings:
        node = by_id[reading.node_id]
        changes.append(_node_changes(node, reading))
        with _COUNTERS_LOCK:
            previous = _COUNTERS.get(reading.node_id)
            if reading.proxy is not None:
                _COUNTERS[reading.node_id] = reading.proxy
        columns = reading.columns(previous)
        if columns is not None:
            rows.append({"node_id": reading.node_id, "period": 0, "at": reading.at,
                         "samples": 1, **columns})
        if reading.sample is not None:
            counts[0] += 1
        else:
            counts[1 if reading.absent else 2] += 1
    if rows:
        db.session.execute(insert(NodeMetric), rows)
    if changes:
        db.session.execute(update(Node), changes)
    db.session.commit()
    return counts[0], counts[1], counts[2]


def poll_node_metrics() -> str:
    """The scheduled job: read every enabled node's Glances once and store what it
    said.  Nodes without metrics are results, not failures."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    config = app.config
    nodes = list(db.session.scalars(select(Node).where(Node.enabled.is_(True))
                                    .order_by(Node.id)))
    if not nodes:
        return "no enabled nodes"
    probes = [probe(node, config["GLANCES_PORT"]) for node in nodes]
    db.session.rollback()  # no transaction stays open while the nodes are read
    started = time.monotonic()
    readings = sweep(app, ssh.pool(app), probes, workers=config["METRICS_PARALLELISM"],
                     timeout=config["METRICS_NODE_TIMEOUT"])
    seconds = time.monotonic() - started
    ok, absent, failed = record(probes, readings)
    return (f"{len(nodes)} node(s) in {seconds:.1f}s: {ok} with metrics, {absent} without "
            f"Glances, {failed} failed")


# --------------------------------------------------------------------------- #
# Reading them back: a node's history, the fleet's latest figures             #
# --------------------------------------------------------------------------- #

#: What a chart shows: how far back, and the resolution read for it (0: raw).
RANGES: dict[str, tuple[timedelta, int]] = {
    "1h": (timedelta(hours=1), RAW),
    "24h": (timedelta(hours=24), FIVE_MINUTES),
    "30d": (timedelta(days=30), HOUR),
}
DEFAULT_RANGE = "24h"
#: The figures a history point carries (averages over the point's samples).
FIGURES = ("cpu_percent", "mem_percent", "swap_percent", "load1", "load5", "load15",
           "disk_percent", "net_rx_bps", "net_tx_bps", "connections", "requests_per_second")


@dataclass(frozen=True)
class Point:
    """One point of a node's history: a raw sample, or the averages of ``samples``
    of them over a bucket starting at ``at`` (one field per name of ``FIGURES``)."""

    at: datetime
    samples: int
    cpu_percent: float | None = None
    mem_percent: float | None = None
    swap_percent: float | None = None
    load1: float | None = None
    load5: float | None = None
    load15: float | None = None
    disk_percent: float | None = None
    net_rx_bps: float | None = None
    net_tx_bps: float | None = None
    connections: float | None = None
    requests_per_second: float | None = None


@dataclass(frozen=True)
class NodeHistory:
    node: Node
    range: str
    resolution: int  # seconds per point; 0 for raw samples
    start: datetime
    end: datetime
    points: list[Point]
    latest: NodeMetric | None  # the last raw sample: file systems, uptime
    gap: timedelta  # points further apart were not measured in between

    def series(self, figure: str) -> list[tuple[datetime, float | None]]:
        return [(point.at, getattr(point, figure)) for point in self.points]


@dataclass(frozen=True)
class FleetRow:
    """A node and its last raw sample (None when it never gave metrics)."""

    node: Node
    latest: NodeMetric | None

    @property
    def has_metrics(self) -> bool:
        return self.latest is not None and not self.node.metrics_error


def _poll_interval() -> float:
    interval = current_app.config["JOB_INTERVALS"].get("node_metrics", 60.0)
    return float(interval) if interval > 0 else 60.0


def latest_sample(node_id: int) -> NodeMetric | None:
    return db.session.scalar(select(NodeMetric).where(
        NodeMetric.node_id == node_id, NodeMetric.period == RAW)
        .order_by(NodeMetric.at.desc()).limit(1))


def _stored_points(node_id: int, period: int, since: datetime) -> list[Point]:
    stmt = (select(NodeMetric).where(NodeMetric.node_id == node_id,
                                     NodeMetric.period == period, NodeMetric.at >= since)
            .order_by(NodeMetric.at))
    return [Point(as_utc(row.at), row.samples, **{f: getattr(row, f) for f in FIGURES})
            for row in db.session.scalars(stmt)]


def _bucketed_raw(node_id: int, seconds: int, since: datetime) -> list[Point]:
    """Raw samples since ``since`` averaged into ``seconds`` buckets, in the
    database: the part of a range that the retention job has not rolled up yet."""
    table = NodeMetric.__table__
    rows = select(*(table.c[f] for f in FIGURES),
                  bucket_start(table.c.at, seconds).label("bucket")).where(
        table.c.node_id == node_id, table.c.period == RAW, table.c.at >= since).subquery()
    stmt = (select(rows.c.bucket, func.count().label("samples"),
                   *(func.avg(rows.c[f]).label(f) for f in FIGURES))
            .group_by(rows.c.bucket).order_by(rows.c.bucket))
    return [Point(as_utc(row.bucket), int(row.samples), **{f: row._mapping[f] for f in FIGURES})
            for row in db.session.execute(stmt)]


def node_history(actor: User, node_id: int, range_name: str | None = None,
                 now: datetime | None = None) -> NodeHistory:
    """A node's figures over ``range_name`` (1h, 24h or 30d) at the resolution that
    suits it: raw samples for an hour, 5-minute averages for a day, hourly ones for
    a month.  Aggregates come from the rolled-up rows, and the recent part the
    retention job has not rolled up yet is averaged from the raw samples.

    :raises ValidationError: an unknown range.
    :raises NotFound: no such node.
    """
    require_admin(actor)
    name = range_name or DEFAULT_RANGE
    if name not in RANGES:
        raise ValidationError("unknown range", {"range": "must be one of "
                                                + ", ".join(RANGES)})
    node = get_or_404(Node, node_id, "node")
    span, resolution = RANGES[name]
    end = now or utcnow()
    start = end - span
    if resolution == RAW:
        points = _stored_points(node_id, RAW, start)
        gap = timedelta(seconds=2.5 * _poll_interval())
    else:
        points = _stored_points(node_id, resolution, start)
        rolled_up = points[-1].at + timedelta(seconds=resolution) if points else start
        points += _bucketed_raw(node_id, resolution, max(rolled_up, start))
        gap = timedelta(seconds=2.5 * resolution)
    return NodeHistory(node, name, resolution, start, end, points, latest_sample(node_id),
                       gap)


def fleet_overview(actor: User, page: int = 1, per_page: int = 200) -> Page[FleetRow]:
    """Every node with its last sample, by name: the row a node's ``metrics_at``
    points to, found through the (node, period, time) index."""
    require_admin(actor)
    page = max(1, int(page))
    per_page = max(1, min(int(per_page), MAX_PER_PAGE))
    total = db.session.scalar(select(func.count()).select_from(Node)) or 0
    stmt = (select(Node, NodeMetric)
            .outerjoin(NodeMetric, and_(NodeMetric.node_id == Node.id,
                                        NodeMetric.period == RAW,
                                        NodeMetric.at == Node.metrics_at))
            .options(joinedload(Node.pool))
            .order_by(Node.name).limit(per_page).offset((page - 1) * per_page))
    rows = [FleetRow(node, metric) for node, metric in db.session.execute(stmt)]
    return Page(items=rows, page=page, per_page=per_page, total=total)
