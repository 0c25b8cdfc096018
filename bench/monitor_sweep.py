"""One monitoring sweep of a large fleet, both halves: node metrics and site checks.

The node_metrics job reads 1,000 nodes' Glances, next to a bare concurrent HTTP GET of
the same endpoints measured in the same run; then come the site checks of
bench/site_check_sweep.py (its :func:`~site_check_sweep.measure` and
:func:`~site_check_sweep.report`).

The nodes are a Glances-speaking server in a process of its own: one listening
socket per node on 127.0.x.y:61208 (1,000 addresses), answering Glances 3's REST API
as Debian's Glances 3.3 does (HTTP/1.0, the connection closed after each answer, the
answers recorded from it in tests/unit/data) and 404 to ``/api/4``.  Each node's
``glances_url`` points at its address: at this scale the reads go over HTTP, not
through SSH tunnels (which would need 1,000 sshd sessions; the tunnel is exercised by
tests/integration/test_node_metrics.py).  The first sweep finds each node's API
version (a 404 for v4, then v3); the later ones ask v3 at once.  The nodes are
Traefik nodes, whose proxy counters the control plane does not read: the sweep also
reads nginx and Caddy nodes' counters through SSH, which this fleet has not, so what
is measured is the Glances read alone.

Prints, per sweep and for the baseline: wall time (goal: a sweep under 5 s), the
threads the process ran at most, its peak resident memory over the phase; then the
database's growth: bytes per stored row (a raw sample with its file systems, a 5- or
60-minute average) measured in the database the bench wrote to, and what 1,000 nodes
sampled every minute store per day and hold at steady state under the default
retention (raw 24 h, 5-minute 30 days, hourly a year).

The site checks' half (real sshd and nginx nodes, sites deployed by the product)
prints its own figures after them; ``--only metrics`` or ``--only sites`` runs one
half.

    unshare -n bash -c 'ip link set lo up; .venv/bin/python bench/monitor_sweep.py'
    [--only metrics|sites] [--nodes 1000] [--sweeps 3]
    [--database postgresql+psycopg://...]  (the metrics half's database)
    [--site-nodes 100] [--sites 100] [--site-repeat 3] [--site-parallelism 32]

It refuses to run outside a network namespace with only loopback.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import resource
import selectors
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: E402
from flask import Flask  # noqa: E402
from flask_migrate import upgrade  # noqa: E402
from sqlalchemy import func, insert, select, text  # noqa: E402

from app import create_app  # noqa: E402
from app.extensions import db  # noqa: E402
from app.models import Node, NodeMetric, Pool, ProxyType  # noqa: E402
from app.models.base import utcnow  # noqa: E402
from app.services import monitoring  # noqa: E402
from app.services.monitoring import glances  # noqa: E402
from bench import site_check_sweep  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECORDED_V3 = ROOT / "tests" / "unit" / "data" / "glances_v3_3.3.1.1.json"
GLANCES_PORT = 61208
GOAL_SECONDS = 5.0
MINUTES_PER_DAY = 24 * 60


def node_address(index: int) -> str:
    return f"127.0.{2 + index // 250}.{1 + index % 250}"


def only_loopback() -> bool:
    """Whether this process's network namespace has no interface but loopback."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


# --------------------------------------------------------------------------- #
# The fleet's Glances                                                         #
# --------------------------------------------------------------------------- #

def _answers() -> dict[str, bytes]:
    recorded = json.loads(RECORDED_V3.read_text())
    # A node with a network interface besides loopback, as real nodes have.
    recorded["network"].append(dict(recorded["network"][0], interface_name="eth0",
                                     rx=187_500, tx=62_500, time_since_update=2.5))
    return {f"/api/3/{plugin}": json.dumps(value).encode()
            for plugin, value in recorded.items()}


def serve_fleet(addresses: list[str], ready: Any, stop: Any) -> None:
    """The fleet's Glances: one listening socket per address, accepted in one loop,
    each connection answered by a thread of a pool, HTTP/1.0 like Glances 3."""
    answers = _answers()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            body = answers.get(self.path)
            self.send_response(200 if body is not None else 404)
            body = body if body is not None else b'{"detail": "Not Found"}'
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    def handle(conn: socket.socket, peer: Any) -> None:
        try:
            Handler(conn, peer, None)  # type: ignore[arg-type]
        except OSError:
            pass
        finally:
            conn.close()

    selector = selectors.DefaultSelector()
    for address in addresses:
        sock = socket.create_server((address, GLANCES_PORT), backlog=128)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    ready.set()
    with ThreadPoolExecutor(max_workers=32) as workers:
        while not stop.is_set():
            for key, _ in selector.select(timeout=0.5):
                try:
                    conn, peer = key.fileobj.accept()  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                conn.setblocking(True)
                workers.submit(handle, conn, peer)


@contextmanager
def fleet_glances(count: int) -> Iterator[list[str]]:
    addresses = [node_address(i) for i in range(count)]
    context = multiprocessing.get_context("fork")
    ready, stop = context.Event(), context.Event()
    process = context.Process(target=serve_fleet, args=(addresses, ready, stop), daemon=True)
    process.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the fleet's Glances did not start")
        yield addresses
    finally:
        stop.set()
        process.join(10)
        if process.is_alive():
            process.kill()


# --------------------------------------------------------------------------- #
# Measuring                                                                   #
# --------------------------------------------------------------------------- #

@dataclass
class Phase:
    name: str
    seconds: float
    threads: int
    peak_mib: float
    detail: str = ""


class ThreadWatch:
    """The most threads the process ran while it watched (sampled every 5 ms)."""

    def __init__(self) -> None:
        self.peak = threading.active_count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, threading.active_count() - 1)

    def __enter__(self) -> ThreadWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def reset_peak_memory() -> None:
    """Linux resets VmHWM (the peak resident size) when 5 is written to clear_refs."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measured(name: str, work: Callable[[], str]) -> Phase:
    reset_peak_memory()
    with ThreadWatch() as watch:
        started = time.perf_counter()
        detail = work()
        seconds = time.perf_counter() - started
    return Phase(name, seconds, watch.peak, peak_memory_mib(), detail)


def bare_get(addresses: list[str], workers: int) -> str:
    """The baseline: every node's v3 endpoints fetched with http.client, the same
    number of threads at once, nothing parsed, nothing stored."""
    paths = [f"/api/3/{plugin}" for plugin in glances.PLUGINS]

    def node(address: str) -> int:
        got = 0
        for path in paths:
            conn = http.client.HTTPConnection(address, GLANCES_PORT, timeout=15)
            try:
                conn.request("GET", path)
                got += len(conn.getresponse().read())
            finally:
                conn.close()
        return got

    with ThreadPoolExecutor(max_workers=workers) as pool:
        total = sum(pool.map(node, addresses))
    return f"{len(addresses) * len(paths)} requests, {total / 1024:.0f} KiB"


# --------------------------------------------------------------------------- #
# Database                                                                    #
# --------------------------------------------------------------------------- #

def add_nodes(addresses: list[str]) -> None:
    """The fleet's rows, written at once (the inventory is not what is measured)."""
    key = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()).decode()
    pool_id = db.session.scalar(select(Pool.id).where(Pool.name == "default"))
    for index, address in enumerate(addresses):
        db.session.add(Node(
            name=f"edge-{index:04d}", host=address, ssh_private_key=key, pool_id=pool_id,
            proxy_type=ProxyType.TRAEFIK, config_dir="/etc/traefik/dynamic",
            test_command="traefik healthcheck", reload_command="true",
            glances_url=f"http://{address}:{GLANCES_PORT}"))
    db.session.commit()


def table_bytes() -> int:
    """The metrics table and its indexes, as the database stores them."""
    engine = db.session.get_bind()
    if engine.dialect.name == "postgresql":
        return int(db.session.scalar(text("SELECT pg_total_relation_size('node_metrics')")))
    # SQLite: the pages of the whole file (only this table grows between two reads).
    page_size = db.session.scalar(text("PRAGMA page_size"))
    free = db.session.scalar(text("PRAGMA freelist_count"))
    pages = db.session.scalar(text("PRAGMA page_count"))
    return int((pages - free) * page_size)


def bytes_per_row(rows: list[dict[str, Any]]) -> float:
    db.session.commit()
    before = table_bytes()
    for start in range(0, len(rows), 5000):
        db.session.execute(insert(NodeMetric), rows[start:start + 5000])
    db.session.commit()
    return (table_bytes() - before) / len(rows)


def row_sizes(node_ids: list[int], count: int) -> tuple[float, float]:
    """Bytes per raw sample (copied from what the sweeps stored, file systems and
    all) and per average (no file systems), from ``count`` rows of each written in
    one go."""
    sample = db.session.scalars(select(NodeMetric).where(NodeMetric.period == 0)
                                .limit(1)).one()
    columns = {c.name: getattr(sample, c.key) for c in NodeMetric.__table__.columns
               if c.name not in ("id", "node_id", "at", "period")}
    start = utcnow() - timedelta(days=400)
    raw = [dict(columns, node_id=node_ids[i % len(node_ids)], period=0,
                at=start + timedelta(minutes=i // len(node_ids))) for i in range(count)]
    averaged = [dict(columns, node_id=node_ids[i % len(node_ids)], period=300, samples=5,
                     filesystems=None, at=start + timedelta(minutes=5 * (i // len(node_ids))))
                for i in range(count)]
    return bytes_per_row(raw), bytes_per_row(averaged)


def growth(nodes: int, raw_bytes: float, average_bytes: float) -> list[str]:
    raw_per_day = nodes * MINUTES_PER_DAY
    five_per_day, hourly_per_day = nodes * 288, nodes * 24
    steady = {"raw (24 h)": raw_per_day * raw_bytes,
              "5-minute (30 days)": five_per_day * 30 * average_bytes,
              "hourly (365 days)": hourly_per_day * 365 * average_bytes}
    day = raw_per_day * raw_bytes + (five_per_day + hourly_per_day) * average_bytes
    lines = [f"bytes per stored row: raw sample {raw_bytes:.0f}, average {average_bytes:.0f}",
             f"growth per day, {nodes} nodes every minute: {raw_per_day:,} raw samples + "
             f"{five_per_day + hourly_per_day:,} averages = {day / 2**20:.0f} MiB/day "
             "(before retention removes any)"]
    lines += [f"steady state, {name}: {size / 2**20:,.0f} MiB" for name, size in steady.items()]
    lines.append(f"steady state, all: {sum(steady.values()) / 2**30:.2f} GiB")
    return lines


# --------------------------------------------------------------------------- #
# The halves                                                                  #
# --------------------------------------------------------------------------- #

def metrics_half(app: Flask, nodes: int, sweeps: int, size_rows: int) -> list[str]:
    """Node metrics: the sweeps, the baseline and the database's growth."""
    workers = app.config["METRICS_PARALLELISM"]
    lines: list[str] = []
    with fleet_glances(nodes) as addresses, app.app_context():
        add_nodes(addresses)
        phases = [measured("baseline: bare concurrent GET", lambda: bare_get(addresses,
                                                                             workers))]
        for number in range(1, sweeps + 1):
            phases.append(measured(f"sweep {number}", monitoring.poll_node_metrics))
        stored = db.session.scalar(select(func.count()).select_from(NodeMetric))
        node_ids = list(db.session.scalars(select(Node.id)))
        raw_bytes, average_bytes = row_sizes(node_ids, size_rows)
    baseline = phases[0].seconds
    lines.append(f"nodes: {nodes}, over HTTP glances_url (Glances 3 API, HTTP/1.0: one "
                 f"connection per request), {workers} threads (METRICS_PARALLELISM); proxy "
                 "counters not read (Traefik nodes, no SSH in this fleet)")
    for phase in phases:
        lines.append(f"{phase.name}: {phase.seconds:.2f} s, {phase.threads} threads at most, "
                     f"peak RSS {phase.peak_mib:.0f} MiB"
                     + (f", {phase.seconds / baseline:.2f}x the baseline"
                        if phase is not phases[0] else "") + f" ({phase.detail})")
    steady = phases[-1]
    lines.append(f"sweep (last): {steady.seconds:.2f} s; goal under {GOAL_SECONDS:.0f} s: "
                 f"{'met' if steady.seconds < GOAL_SECONDS else 'NOT met'}")
    lines.append(f"raw samples stored by the sweeps: {stored}")
    lines += growth(nodes, raw_bytes, average_bytes)
    return lines


def load_average() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def metrics_lines(args: argparse.Namespace) -> list[str]:
    """The metrics half in a database of its own (a new SQLite file by default),
    removed when it ends."""
    workdir = tempfile.mkdtemp(prefix="rpcc-monitor-sweep-")
    try:
        url = args.database or "sqlite:///" + os.path.join(workdir, "bench.db")
        app = create_app("testing", {"SQLALCHEMY_DATABASE_URI": url})
        with app.app_context():
            upgrade()
        return [f"database: {url.split(':', 1)[0]}",
                *metrics_half(app, args.nodes, args.sweeps, args.size_rows)]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("metrics", "sites"),
                        help="run one half only (default: both)")
    metrics = parser.add_argument_group("node metrics")
    metrics.add_argument("--nodes", type=int, default=1000)
    metrics.add_argument("--sweeps", type=int, default=3)
    metrics.add_argument("--size-rows", type=int, default=100_000,
                         help="rows of each kind written to measure bytes per row")
    metrics.add_argument("--database", default="",
                         help="SQLAlchemy URL of an empty database (default: a new SQLite file)")
    sites = parser.add_argument_group("site checks (bench/site_check_sweep.py)")
    sites.add_argument("--site-nodes", type=int, default=100, help="nginx nodes")
    sites.add_argument("--sites", type=int, default=100, help="sites in their pool")
    sites.add_argument("--site-repeat", type=int, default=3, help="timed sweeps")
    sites.add_argument("--site-parallelism", type=int, default=32,
                       help="SITE_CHECK_PARALLELISM (and the baseline's threads)")
    args = parser.parse_args()
    if not only_loopback():
        sys.exit("run it in a loopback-only network namespace: "
                 "unshare -n bash -c 'ip link set lo up; .venv/bin/python bench/monitor_sweep.py'")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))

    print(f"load average at start: {load_average()} ({os.cpu_count()} CPU cores)", flush=True)
    if args.only != "sites":
        print("== node metrics ==", flush=True)
        for line in metrics_lines(args):
            print(line, flush=True)
    if args.only != "metrics":
        print("== site checks ==", flush=True)
        figures = site_check_sweep.measure(args.site_nodes, args.sites, args.site_repeat,
                                           args.site_parallelism)
        for line in site_check_sweep.report(figures):
            print(line, flush=True)
    print(f"load average at end: {load_average()}")


if __name__ == "__main__":
    main()
