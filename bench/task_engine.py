"""A rollout to 50 real nginx nodes through the task engine (two Celery workers on a
real Redis) next to the same rollout through the in-process executor, in the same
run, on the same PostgreSQL database, nodes and site.

Each measured run is one site change (a new header value) deployed with
``deployments.deploy_site`` and followed with ``deployments.wait``, alternately by
the two executors; outside the timed section every run is checked (the rollout and
each node's deployment succeeded, every node serves the new value).  For each
executor it prints the median wall time from the request to the rollout's end, the
wait before the rollout started (for the task engine: the broker and a worker picking
the task up) and the rollout's own duration from its records; then the ratio, the
CPU spent by this process and by the workers, and the load average at start and end.

    .venv/bin/python bench/task_engine.py [--nodes 50] [--repeat 5]

It needs a PostgreSQL server (two workers and this process share the database):
``--postgres-admin-url`` (default ``TEST_POSTGRES_ADMIN_URL``), a URL to its
``postgres`` database, as scripts/test-inner.sh exports.  Run it in a loopback-only
network namespace (nodes use 127.0.1.x, Redis 127.0.0.1), e.g. with PostgreSQL
started as scripts/test-inner.sh does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flask import Flask  # noqa: E402

from app import create_app  # noqa: E402
from app.extensions import db, ssh  # noqa: E402
from app.models import DeploymentStatus, Rollout, User  # noqa: E402
from app.services import deployments, sites  # noqa: E402
from bench.deploy_fanout import (  # noqa: E402
    load_average,
    node_address,
    process_cpu,
    start_backend,
    start_node,
)
from tests import factories  # noqa: E402
from tests.components import POSTGRES_ADMIN_URL, app_env, postgres_database  # noqa: E402
from tests.fleet import FleetNode, register  # noqa: E402
from tests.nginx_node import allow_open_files, fetch  # noqa: E402
from tests.sshd import SshServer, below, process_children  # noqa: E402
from tests.task_engine import RedisServer, Worker  # noqa: E402

DOMAIN = "engine.example.com"
HEADER = "X-Bench"
STALE_LIMIT = 10.0  # seconds a node may still serve the previous value after the end


@dataclass
class Figures:
    name: str
    wall: list[float] = field(default_factory=list)  # request -> rollout finished
    queued: list[float] = field(default_factory=list)  # created -> started (records)
    rollout: list[float] = field(default_factory=list)  # started -> finished (records)
    cpu_here: list[float] = field(default_factory=list)
    cpu_workers: list[float] = field(default_factory=list)


class Bench:
    def __init__(self, apps: dict[str, Flask], client_id: int, site_id: int,
                 fleet: list[FleetNode], workers: list[Worker]) -> None:
        self.apps = apps
        self.client_id = client_id
        self.site_id = site_id
        self.fleet = fleet
        self.workers = workers
        self.counter = 0

    def workers_cpu(self) -> float:
        """CPU seconds of the workers and their pool processes so far."""
        children = process_children()
        pids = [pid for w in self.workers for pid in (w.process.pid,
                                                     *below(children, w.process.pid))]
        return process_cpu(pids)

    def run(self, figures: Figures) -> None:
        """One deploy of a new value by the executor of ``figures.name``, timed, then
        checked."""
        app = self.apps[figures.name]
        self.counter += 1
        value = f"v{self.counter}"
        with app.app_context():
            client = db.session.get(User, self.client_id)
            assert client is not None
            sites.update_site(client, self.site_id, {"headers": {HEADER: value}})
            cpu_here, cpu_workers = os.times(), self.workers_cpu()
            started = time.perf_counter()
            rollout_id = deployments.deploy_site(client, self.site_id).id
            rollout = deployments.wait(rollout_id, timeout=600)
            wall = time.perf_counter() - started
            figures.cpu_workers.append(self.workers_cpu() - cpu_workers)
            after = os.times()
            figures.cpu_here.append((after.user + after.system)
                                    - (cpu_here.user + cpu_here.system))
            figures.wall.append(wall)
            self.check(rollout)
            assert rollout.started_at and rollout.finished_at
            figures.queued.append((rollout.started_at - rollout.created_at).total_seconds())
            figures.rollout.append((rollout.finished_at - rollout.started_at).total_seconds())
            db.session.remove()
        for node in self.fleet:
            self.visible(node, value)

    def check(self, rollout: Rollout) -> None:
        assert rollout.status == DeploymentStatus.SUCCEEDED, rollout.error
        assert {d.node_id for d in rollout.deployments} == {n.id for n in self.fleet}
        assert {d.status for d in rollout.deployments} == {DeploymentStatus.SUCCEEDED}

    def visible(self, node: FleetNode, value: str) -> None:
        deadline = time.perf_counter() + STALE_LIMIT
        while (got := fetch(node.nginx, DOMAIN).headers.get(HEADER.lower())) != value:
            assert time.perf_counter() < deadline, (node.name, got, value)
            time.sleep(0.01)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5, help="measured runs per executor")
    parser.add_argument("--concurrency", type=int, default=2,
                        help="pool processes of each of the two workers")
    parser.add_argument("--postgres-admin-url", default=os.environ.get(POSTGRES_ADMIN_URL),
                        help="URL of a PostgreSQL server's postgres database")
    args = parser.parse_args()
    if not args.postgres_admin_url:
        parser.error(f"needs --postgres-admin-url or {POSTGRES_ADMIN_URL}")
    os.environ[POSTGRES_ADMIN_URL] = args.postgres_admin_url
    load_start = load_average()
    print(f"load average at start: {load_start} ({os.cpu_count()} CPU cores)", flush=True)
    allow_open_files(4096 + 8 * args.nodes)

    with postgres_database("rpcc_bench_tasks") as url, ExitStack() as teardown:
        redis = RedisServer("127.0.0.1")
        teardown.callback(redis.stop)
        env = app_env(url, CELERY_BROKER_URL=redis.url)
        t0 = time.perf_counter()
        workers = []
        for name in ("one", "two"):
            worker = Worker(env, name, concurrency=args.concurrency)
            teardown.callback(worker.stop)
            workers.append(worker)
        print(f"redis on {redis.address}:{redis.port}; 2 workers of {args.concurrency} "
              f"processes each, ready in {time.perf_counter() - t0:.1f} s", flush=True)
        settings = {"SQLALCHEMY_DATABASE_URI": url, "ENCRYPTION_KEYS": env["ENCRYPTION_KEYS"],
                    "RATELIMIT_ENABLED": False}
        apps = {"in-process": create_app("testing", settings),
                "task engine": create_app("testing", {**settings,
                                                      "CELERY_BROKER_URL": redis.url})}
        for app in apps.values():
            teardown.callback(ssh.reset, app)
        sshd = SshServer()
        teardown.callback(sshd.stop)
        t0 = time.perf_counter()
        started = []
        for index in range(args.nodes):
            nginx = start_node(node_address(index))
            teardown.callback(nginx.remove)
            teardown.callback(nginx.stop)
            started.append(nginx)
        backend, backend_port = start_backend()
        teardown.callback(backend.wait)
        teardown.callback(backend.kill)
        with apps["in-process"].app_context():
            admin = factories.make_user("admin", "benchadmin")
            client = factories.make_user("client", "benchclient")
            fleet = [register(admin, nginx, f"edge-{i:03d}", sshd.port, sshd.client_key_text)
                     for i, nginx in enumerate(started)]
            site = factories.make_site(client, DOMAIN, backends=[
                {"host": "127.0.0.1", "port": backend_port}], headers={HEADER: "v0"})
            first = deployments.wait(deployments.deploy_site(client, site.id).id, timeout=600)
            assert first.status == DeploymentStatus.SUCCEEDED, first.error
            client_id, site_id = client.id, site.id
        print(f"fleet: {args.nodes} nginx nodes on {node_address(0)}..."
              f"{node_address(args.nodes - 1)} behind 1 sshd, started and first deployed "
              f"(adopt, in process) in {time.perf_counter() - t0:.1f} s", flush=True)

        bench = Bench(apps, client_id, site_id, fleet, workers)
        results = {name: Figures(name) for name in apps}
        # One unmeasured run each: the workers' first connections to the nodes and
        # to the database are theirs to open once, as this process's already are.
        for figures in results.values():
            bench.run(Figures(figures.name))
        for _ in range(args.repeat):
            for figures in results.values():
                bench.run(figures)
        load_end = load_average()

    local, remote = results["in-process"], results["task engine"]
    print(f"\n{args.nodes} nodes, {args.repeat} warm rollouts per executor, alternating; "
          "seconds, median (best):")
    for figures in (local, remote):
        print(f"{figures.name}: request to end {median(figures.wall):.3f} "
              f"({min(figures.wall):.3f}); waiting to start {median(figures.queued):.3f}; "
              f"the rollout itself {median(figures.rollout):.3f}; CPU here "
              f"{median(figures.cpu_here):.3f}, in the workers "
              f"{median(figures.cpu_workers):.3f}")
    print("\nsummary (one figure per line):")
    print(f"in-process executor, {args.nodes} nodes: {median(local.wall):.3f} s")
    print(f"task engine (2 Celery workers on Redis), {args.nodes} nodes: "
          f"{median(remote.wall):.3f} s")
    print(f"ratio task engine / in-process: {median(remote.wall) / median(local.wall):.2f}")
    print(f"task engine's wait before the rollout started: {median(remote.queued):.3f} s "
          f"(in-process {median(local.queued):.3f} s)")
    print(f"load average at start: {load_start}; at end: {load_end} "
          f"({os.cpu_count()} CPU cores shared with other work)")


if __name__ == "__main__":
    main()
