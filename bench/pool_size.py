"""What a one-site change costs as the pool grows: the same change deployed to the same
real nginx (or Caddy) nodes (one real sshd on loopback) while the pool holds 1 site,
then after the pool has grown to thousands of sites.

Prints, in one run: the warm one-site change with 1 site in the pool (median of a
few runs, the baseline), the first deployment of the big pool, the warm one-site
change in the big pool (median), their ratio against the goal (at most 3x), the same
change made by ``deploy_fanout``'s bare push (one file + test + reload + HTTP check,
no control plane; nginx nodes only) to the same nodes at each pool size, which is the
floor the nodes' nginx sets (it parses every site of the pool for the test, again for
``nginx -s reload`` and again in the master, whoever sends it; ``--reload signal``
spares the second), what each deployment sent to a node (files and bytes of the upload step),
the control plane's CPU seconds per node per deploy, and how much the database grew
for one change.
Every run is checked outside the timed part: the rollout succeeded and every node
serves the new header.

    .venv/bin/python bench/pool_size.py [--engine nginx|caddy] [--reload command|signal]
        [--nodes 10] [--sites 2000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flask_migrate import upgrade  # noqa: E402
from sqlalchemy import text  # noqa: E402

from app import create_app  # noqa: E402
from app.engines.nginx import ENGINE as NGINX  # noqa: E402
from app.extensions import db, ssh  # noqa: E402
from app.models import DeploymentStatus, Rollout  # noqa: E402
from app.services import deployments, sites  # noqa: E402
from bench.deploy_fanout import (  # noqa: E402
    BARE_FILE,
    DOMAIN,
    BarePush,
    code_version,
    process_cpu,
    start_backend,
)
from tests import factories  # noqa: E402
from tests.caddy_node import CaddyNode  # noqa: E402
from tests.fleet import FleetNode, register, register_caddy  # noqa: E402
from tests.nginx_node import BASE_OPEN_FILES, NginxNode, allow_open_files, fetch  # noqa: E402
from tests.sshd import SshServer, descendants  # noqa: E402

HEADER = "X-Bench"
GOAL_RATIO = 3.0
GOAL_FIRST_SECONDS = 10.0


def node_address(index: int) -> str:
    """127.0.3.1, 127.0.3.2, ... (clear of the tests' and the other benches' nodes)."""
    return f"127.0.3.{1 + index}"


@dataclass
class ProxyNode:
    """A node of either engine as the bench reads it: where it serves, and the
    processes of its proxy."""

    name: str
    address: str
    http_port: int
    pids: Callable[[], list[int]]


def start_node(address: str, sites_expected: int, reload: str = "command") -> NginxNode:
    """An nginx node allowed the descriptors a pool this big needs (two logs a site),
    whose nginx.conf also includes the bare push's own file.  ``reload`` "signal"
    gives the node (for the app and the bare push alike) the reload form that signals
    the master through its pid file instead of ``nginx -s reload``."""
    node = NginxNode(address=address)
    if reload == "signal":
        node.spec = replace(node.spec,
                            reload_command=f"pkill -HUP -F {node.pid_file} -x nginx")
    empty = NGINX.render(node.spec, [])
    node.write(empty)
    bare = node.root / BARE_FILE
    bare.write_text("# the bare push writes this file\n")
    bare.chmod(0o644)
    node.open_files = allow_open_files(BASE_OPEN_FILES + 2 * sites_expected + 64)
    node.write_main_conf(f"{empty.include_line}\n    include {bare};")
    node.start()
    return node


def nginx_pids(nginx: NginxNode) -> list[int]:
    master = nginx.process.pid if nginx.process else 0
    return [master, *descendants(master)] if master else []


def start_caddy(root: Path, address: str) -> CaddyNode:
    """A Caddy node serving an empty managed directory, which the first deployment
    adopts."""
    caddy = CaddyNode(root, listen_address=address)
    caddy.apply([])
    return caddy


def bare_floor(bare: BarePush, repeat: int) -> float:
    """Median seconds of the bare push to the nodes it holds."""
    values = [float(bare.push(f"b{time.monotonic_ns()}")["seconds"]) for _ in range(repeat)]
    return statistics.median(values)


def database_bytes() -> int:
    """Bytes the database's pages hold (SQLite): what it grew by is the change's cost."""
    page_size = db.session.execute(text("PRAGMA page_size")).scalar_one()
    pages = db.session.execute(text("PRAGMA page_count")).scalar_one()
    free = db.session.execute(text("PRAGMA freelist_count")).scalar_one()
    return int(page_size) * (int(pages) - int(free))


class Bench:
    def __init__(self, client: object, site_id: int, fleet: list[ProxyNode],
                 sshd: SshServer) -> None:
        self.client = client
        self.site_id = site_id
        self.fleet = fleet
        self.sshd = sshd
        self.counter = 0
        self.node_cpu: list[float] = []

    def nodes_cpu(self) -> float:
        """CPU seconds of the nodes' side: sshd and its sessions (the staging command,
        the test and reload commands), the proxies' own processes."""
        sshd = self.sshd.process.pid if self.sshd.process else 0
        pids = [sshd, *descendants(sshd), *(pid for n in self.fleet for pid in n.pids())]
        return process_cpu(pids)

    def change(self) -> tuple[float, float, Rollout]:
        """One timed one-site change, deployed; returns seconds, control-plane CPU
        seconds and the rollout (checked: every node serves the new value)."""
        self.counter += 1
        value = f"v{self.counter}"
        nodes0 = self.nodes_cpu()
        cpu0 = time.process_time()
        started = time.perf_counter()
        sites.update_site(self.client, self.site_id, {"headers": {HEADER: value}})
        rollout = deployments.wait(deployments.deploy_site(self.client, self.site_id).id,
                                   timeout=900)
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu0
        self.node_cpu.append(self.nodes_cpu() - nodes0)
        self.check(rollout, value)
        return seconds, cpu, rollout

    def check(self, rollout: Rollout, value: str) -> None:
        if rollout.status != DeploymentStatus.SUCCEEDED:
            raise SystemExit(f"rollout {rollout.id} failed: {rollout.error}")
        for node in self.fleet:
            deadline = time.monotonic() + 10
            while True:
                answer = fetch(node, DOMAIN)
                if answer.headers.get(HEADER.lower()) == value:
                    break
                if time.monotonic() >= deadline:
                    raise SystemExit(f"{node.name} does not serve {value}")
                time.sleep(0.02)


def profile(bench: Bench, top: int) -> None:
    """One more change with every thread under cProfile: where the control plane's
    time goes in a big pool."""
    profiles: list[cProfile.Profile] = []
    guard = threading.Lock()

    def start_profiler(frame: object, event_name: str, arg: object) -> None:
        profiler = cProfile.Profile()
        with guard:
            profiles.append(profiler)
        profiler.enable()

    threading.setprofile(start_profiler)  # type: ignore[arg-type]
    main_profiler = cProfile.Profile()
    main_profiler.enable()
    try:
        seconds, _, rollout = bench.change()
    finally:
        main_profiler.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
    stats = pstats.Stats(main_profiler, stream=sys.stdout)
    for profiler in profiles:
        stats.add(profiler)
    steps: dict[str, list[float]] = {}
    for deployment in rollout.deployments:
        for step in deployment.steps:
            steps.setdefault(step["step"], []).append(step["seconds"])
    print(f"\nprofile of one more change ({seconds:.2f} s under cProfile); median step "
          "seconds: " + ", ".join(f"{name} {statistics.median(values):.3f}"
                                  for name, values in steps.items()))
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(r"/app/", top)


def uploads(rollout: Rollout) -> str:
    steps = [next(s for s in d.steps if s["step"] == "upload") for d in rollout.deployments]
    modes = sorted({s.get("mode", "?") for s in steps})
    files = statistics.median(s.get("files", 0) for s in steps)
    sent = statistics.median(s.get("bytes", 0) for s in steps)
    return f"upload {'/'.join(modes)}, {files:g} files, {sent / 1024:.0f} KiB per node"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("nginx", "caddy"), default="nginx")
    parser.add_argument("--reload", choices=("command", "signal"), default="command",
                        help="nginx nodes' reload: 'nginx -s reload', or pkill -HUP on the "
                             "master's pid file (no second parse of the configuration)")
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--sites", type=int, default=2000, help="sites in the big pool")
    parser.add_argument("--repeat", type=int, default=3, help="warm runs per pool size")
    parser.add_argument("--profile", type=int, default=0,
                        help="profile one more change in the big pool; print this many "
                             "functions")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="rpcc-bench-pool-")
    app = create_app("testing", {
        "SQLALCHEMY_DATABASE_URI": "sqlite:///" + os.path.join(workdir, "bench.db"),
        "RATELIMIT_ENABLED": False, "WTF_CSRF_ENABLED": False,
        "DEPLOY_REQUEST_LIMIT": "100000/minute",
    })
    print(f"code: {code_version()}; reload: {args.reload}")
    sshd: SshServer | None = None
    started: list[NginxNode] = []
    caddies: list[CaddyNode] = []
    backend = None
    bare: BarePush | None = None
    try:
        with app.app_context():
            upgrade()
            admin = factories.make_user("admin", "benchadmin")
            client = factories.make_user("client", "benchclient")
            sshd = SshServer()
            nginx_fleet: list[FleetNode] = []
            fleet: list[ProxyNode] = []
            for index in range(args.nodes):
                name = f"edge-{index:02d}"
                if args.engine == "caddy":
                    caddy = start_caddy(Path(workdir) / name, node_address(index))
                    caddies.append(caddy)
                    register_caddy(admin, caddy, name, sshd.port, sshd.client_key_text)
                    process = caddy.process
                    fleet.append(ProxyNode(name, caddy.host, caddy.spec.http_port,
                                           lambda p=process: [p.pid] if p else []))
                    continue
                nginx = start_node(node_address(index), args.sites + 1, args.reload)
                started.append(nginx)
                nginx_fleet.append(register(admin, nginx, name, sshd.port,
                                            sshd.client_key_text))
                fleet.append(ProxyNode(name, nginx.address, nginx.http_port,
                                       lambda n=nginx: nginx_pids(n)))
            backend, port = start_backend()
            site = factories.make_site(client, DOMAIN, backends=[
                {"host": "127.0.0.1", "port": port}], headers={HEADER: "v0"})
            bench = Bench(client, site.id, fleet, sshd)
            load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
            print(f"{args.nodes} {args.engine} nodes behind 1 sshd, {os.cpu_count()} cores; "
                  f"load average {load}")

            bench.change()  # adopts each node's directory and pins host keys: a one-off
            small = [bench.change() for _ in range(args.repeat)]
            small_nodes = statistics.median(bench.node_cpu[-args.repeat:])
            small_s = statistics.median(s for s, _, _ in small)
            small_cpu = statistics.median(c for _, c, _ in small)
            print(f"pool of 1 site: one-site change, median of {args.repeat}: "
                  f"{small_s:.3f} s ({uploads(small[-1][2])})", flush=True)
            workers = min(int(app.config["DEPLOY_PARALLELISM"]), args.nodes)
            if nginx_fleet:
                bare = BarePush(sshd)
                bare.connect(nginx_fleet, workers)
                small_bare = bare_floor(bare, args.repeat)
                print(f"pool of 1 site: bare push, median of {args.repeat}: "
                      f"{small_bare:.3f} s", flush=True)

            t0 = time.perf_counter()
            admin.max_sites = args.sites + 10
            db.session.commit()
            backends = [{"host": "127.0.0.1", "port": port}]
            for index in range(args.sites - 1):
                factories.make_site(admin,
                                    f"site{index:05d}.example.org", backends=backends,
                                    headers={"X-Site": str(index)})
            print(f"added {args.sites - 1} sites in {time.perf_counter() - t0:.1f} s "
                  f"(not timed)", flush=True)
            first, first_cpu, first_rollout = bench.change()
            print(f"first deploy of the {args.sites}-site pool: {first:.2f} s "
                  f"({uploads(first_rollout)})", flush=True)

            big = []
            growth = []
            for _ in range(args.repeat):
                before = database_bytes()
                big.append(bench.change())
                growth.append(database_bytes() - before)
            big_nodes = statistics.median(bench.node_cpu[-args.repeat:])
            big_s = statistics.median(s for s, _, _ in big)
            big_cpu = statistics.median(c for _, c, _ in big)
            print(f"pool of {args.sites} sites: one-site change, median of {args.repeat}: "
                  f"{big_s:.3f} s ({uploads(big[-1][2])})")
            if bare is not None:
                bare.connect(nginx_fleet, workers)
                big_bare = bare_floor(bare, args.repeat)
                print(f"pool of {args.sites} sites: bare push, median of {args.repeat}: "
                      f"{big_bare:.3f} s", flush=True)

            ratio = big_s / small_s
            print("\nsummary")
            print(f"  one-site change, 1-site pool (baseline):  {small_s:.3f} s")
            print(f"  one-site change, {args.sites}-site pool:        {big_s:.3f} s  "
                  f"ratio {ratio:.2f}x (goal at most {GOAL_RATIO:g}x): "
                  f"{'met' if ratio <= GOAL_RATIO else 'missed'}")
            if bare is not None:
                print(f"  bare push floor (same nodes, same run):   {small_bare:.3f} s "
                      f"(1 site), {big_bare:.3f} s ({args.sites} sites): the pool's size "
                      f"costs the bare push {big_bare - small_bare:.3f} s and the control "
                      f"plane's change {big_s - small_s:.3f} s")
                print(f"  one-site change against the bare push:   "
                      f"{small_s / small_bare:.2f}x (1 site), {big_s / big_bare:.2f}x "
                      f"({args.sites} sites)")
            else:
                print("  bare push floor:                          not measured (nginx "
                      "nodes only)")
            print(f"  first deploy of the {args.sites}-site pool:     {first:.2f} s "
                  f"(goal under {GOAL_FIRST_SECONDS:g} s): "
                  f"{'met' if first < GOAL_FIRST_SECONDS else 'missed'}")
            print(f"  control-plane CPU per node per deploy:   "
                  f"{small_cpu / args.nodes * 1000:.1f} ms (1 site), "
                  f"{big_cpu / args.nodes * 1000:.1f} ms ({args.sites} sites), "
                  f"{first_cpu / args.nodes * 1000:.1f} ms (first deploy)")
            print(f"  the nodes' CPU per node per deploy:       "
                  f"{small_nodes / args.nodes * 1000:.1f} ms (1 site), "
                  f"{big_nodes / args.nodes * 1000:.1f} ms ({args.sites} sites)")
            print(f"  database growth per one-site change:     "
                  f"{statistics.median(growth) / 1024:.0f} KiB (median of {args.repeat})")
            print(f"  load average after: "
                  f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}")
            if args.profile:
                profile(bench, args.profile)
    finally:
        if bare is not None:
            bare.stop()
        ssh.reset(app)
        if backend is not None:
            backend.terminate()
            backend.wait()
        for nginx in started:
            nginx.stop()
            nginx.remove()
        for caddy in caddies:
            caddy.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if sshd is not None:
            sshd.stop()


if __name__ == "__main__":
    main()
