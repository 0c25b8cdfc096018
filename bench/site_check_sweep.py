"""The site checks' sweep: every site asked for through every node, over each node's
pooled SSH connection, against bare concurrent HTTP requests measured in the same run.

The fleet is real and on loopback: one sshd, ``--nodes`` nginx nodes (127.0.1.x), one
pool of ``--sites`` sites deployed to every node by the product itself, and one
nginx answering 200 as every site's backend.  A sweep is the ``site_checks`` job
(``uptime.check_sites``): it plans the checks from the database, asks each node's
proxy for each site through a channel its SSH connection forwards (plain HTTP/1.1,
the status line read), and inserts one row per check.  The first sweep opens the SSH
connections and is reported apart; the others are timed (median).  The baseline sends
the same requests (same Host headers, same nodes) straight to the nodes' ports with as
many threads as ``SITE_CHECK_PARALLELISM``, one connection each, no SSH and no
database.

Prints, one figure per line: wall time per sweep (goal under 30 s for 10,000 checks),
the baseline's, their ratio, checks per second, the threads alive at most during a
sweep, the control plane's peak resident memory during the sweeps and the load average
at start and end.  Every sweep's summary must read all checks up.

    .venv/bin/python bench/site_check_sweep.py [--nodes 100] [--sites 100] [--repeat 3]

Run it in a loopback-only network namespace:
``unshare -n bash -c 'ip link set lo up; .venv/bin/python bench/site_check_sweep.py'``.
``monitor_sweep`` calls :func:`measure` and prints :func:`report`'s lines.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flask_migrate import upgrade  # noqa: E402

from app import create_app  # noqa: E402
from app.extensions import db, ssh  # noqa: E402
from app.models import DeploymentStatus  # noqa: E402
from app.services import deployments, sites, uptime  # noqa: E402
from bench.deploy_fanout import load_average, rss_kb  # noqa: E402
from tests import factories  # noqa: E402
from tests.fleet import register, start_nginx  # noqa: E402
from tests.nginx_node import NginxNode, allow_open_files  # noqa: E402
from tests.processes import free_port, listening, require_binary, start, stop  # noqa: E402
from tests.sshd import SshServer  # noqa: E402

GOAL_SWEEP_SECONDS = 30.0
GOAL_CHECKS = 10_000


def node_address(index: int) -> str:
    """127.0.1.1, 127.0.1.2, ... (clear of the tests' 127.0.0.x nodes)."""
    return f"127.0.{1 + index // 250}.{1 + index % 250}"


class Sampler:
    """Peak resident memory, peak live threads and peak site-check threads of this
    process within a section, sampled every 10 ms."""

    def __init__(self) -> None:
        self.rss_kb = 0
        self.threads = 0
        self.checkers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.rss_kb = max(self.rss_kb, rss_kb())
            threads = threading.enumerate()
            self.threads = max(self.threads, len(threads))
            self.checkers = max(self.checkers, sum(1 for t in threads
                                                   if t.name == "rpcc-site-check"))

    @contextmanager
    def window(self) -> Iterator[None]:
        self.rss_kb, self.threads, self.checkers = rss_kb(), threading.active_count(), 0
        yield

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def start_backend(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    """One nginx answering 200 to anything: every site's backend, cheap enough that
    the sweep measures the checks, not the backend."""
    port = free_port()
    root.mkdir(mode=0o755)
    conf = root / "nginx.conf"
    conf.write_text(f"""worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok\\n"; }} }}
}}
""")
    process = start([require_binary("nginx"), "-p", str(root), "-c", str(conf),
                     "-e", str(root / "error.log")],
                    ready=listening(("127.0.0.1", port)), log=root / "nginx.out")
    return process, port


# A backend in a process of its own: 200 and a closed connection for each request,
# until SIGUSR1; from then on it reads each request and never answers, holding the
# connection until the other side closes it.
STALLER = r"""
import signal, socket, threading
stalling = threading.Event()
signal.signal(signal.SIGUSR1, lambda *_: stalling.set())
listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
print(listener.getsockname()[1], flush=True)
def serve(conn):
    with conn:
        head = b""
        while b"\r\n\r\n" not in head:
            data = conn.recv(4096)
            if not data:
                return
            head += data
        if stalling.is_set():
            while conn.recv(4096):
                pass
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def start_staller() -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen([sys.executable, "-c", STALLER], stdout=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.strip().isdigit():
        process.kill()
        process.wait()
        raise RuntimeError("the stalling backend did not start")
    return process, int(line)


@dataclass
class Figures:
    nodes: int
    sites: int
    stalled_sites: int
    parallelism: int
    timeout: float
    checks: int = 0
    first_sweep: float = 0.0
    sweeps: list[float] = field(default_factory=list)
    baselines: list[float] = field(default_factory=list)
    stalled_sweeps: list[float] = field(default_factory=list)
    peak_threads: int = 0
    peak_checkers: int = 0
    peak_rss_mb: float = 0.0
    stalled_peak_threads: int = 0
    stalled_peak_checkers: int = 0
    summaries: list[str] = field(default_factory=list)
    stalled_summaries: list[str] = field(default_factory=list)
    load_start: str = ""
    load_end: str = ""


def bare_requests(targets: list[tuple[str, int, str]], parallelism: int) -> float:
    """Seconds to send every request straight to the nodes' ports, ``parallelism``
    at once, reading each status as the check does."""

    def one(target: tuple[str, int, str]) -> int:
        address, port, host = target
        conn = http.client.HTTPConnection(address, port, timeout=10)
        try:
            conn.request("GET", "/", headers={"Host": host, "Connection": "close"})
            return conn.getresponse().status
        finally:
            conn.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=parallelism) as executor:
        statuses = list(executor.map(one, targets))
    seconds = time.perf_counter() - started
    assert statuses.count(200) == len(targets), "the baseline's requests must all answer 200"
    return seconds


def measure(nodes: int, sites_per_pool: int, repeat: int, parallelism: int, *,
            stalled: int = 0, timeout: float = 10.0) -> Figures:
    """Build the fleet, deploy, sweep, compare, tear down; the figures.  With
    ``stalled``, that many more sites whose backend then stops answering are swept
    ``repeat`` more times at the end."""
    figures = Figures(nodes, sites_per_pool, stalled, parallelism, timeout,
                      load_start=load_average())
    allow_open_files(4096 + 8 * nodes + 4 * parallelism)
    workdir = Path(tempfile.mkdtemp(prefix="rpcc-bench-checks-"))
    app = create_app("testing", {
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{workdir / 'bench.db'}",
        "RATELIMIT_ENABLED": False, "SITE_CHECK_PARALLELISM": parallelism,
        "SITE_CHECK_TIMEOUT": timeout,
    })
    sampler = Sampler()
    with ExitStack() as teardown:
        teardown.callback(shutil.rmtree, workdir, ignore_errors=True)
        teardown.callback(sampler.stop)
        sshd = SshServer()
        teardown.callback(sshd.stop)
        backend, backend_port = start_backend(workdir / "backend")
        teardown.callback(stop, backend)
        staller, staller_port = start_staller()
        teardown.callback(staller.wait)
        teardown.callback(staller.kill)
        started: list[NginxNode] = []
        for index in range(nodes):
            nginx = start_nginx(node_address(index))
            teardown.callback(nginx.remove)
            teardown.callback(nginx.stop)
            started.append(nginx)
        with app.app_context():
            teardown.callback(ssh.reset, app)
            upgrade()
            admin = factories.make_user("admin", "benchadmin")
            owner = factories.make_user("client", "benchclient",
                                        max_sites=sites_per_pool + stalled)
            fleet = [register(admin, nginx, f"edge-{i:03d}", sshd.port, sshd.client_key_text)
                     for i, nginx in enumerate(started)]
            domains = [f"site{i:04d}.bench.example" for i in range(sites_per_pool)]
            for domain in domains:
                sites.create_site(owner, {"domain": domain, "backends": [
                    {"host": "127.0.0.1", "port": backend_port, "weight": 1}]})
            stalling = [f"stall{index:02d}.bench.example" for index in range(stalled)]
            for domain in stalling:
                sites.create_site(owner, {"domain": domain, "backends": [
                    {"host": "127.0.0.1", "port": staller_port, "weight": 1}]})
            rollout = deployments.deploy_nodes(admin, [node.id for node in fleet])
            done = deployments.wait(rollout.id, timeout=1800)
            assert done.status == DeploymentStatus.SUCCEEDED, done.error
            # Until told to stall, the stalling sites' backend answers like the others.
            targets = [(nginx.address, nginx.http_port, domain)
                       for nginx in started for domain in domains + stalling]
            figures.checks = len(targets)
            db.session.remove()

            started_at = time.perf_counter()
            figures.summaries.append(uptime.check_sites())
            figures.first_sweep = time.perf_counter() - started_at
            for _ in range(repeat):
                with sampler.window():
                    started_at = time.perf_counter()
                    figures.summaries.append(uptime.check_sites())
                    figures.sweeps.append(time.perf_counter() - started_at)
                figures.peak_threads = max(figures.peak_threads, sampler.threads)
                figures.peak_checkers = max(figures.peak_checkers, sampler.checkers)
                figures.peak_rss_mb = max(figures.peak_rss_mb, sampler.rss_kb / 1024)
                db.session.remove()
                figures.baselines.append(bare_requests(targets, parallelism))
            if stalled:
                staller.send_signal(signal.SIGUSR1)
                for _ in range(repeat):
                    with sampler.window():
                        started_at = time.perf_counter()
                        figures.stalled_summaries.append(uptime.check_sites())
                        figures.stalled_sweeps.append(time.perf_counter() - started_at)
                    figures.stalled_peak_threads = max(figures.stalled_peak_threads,
                                                       sampler.threads)
                    figures.stalled_peak_checkers = max(figures.stalled_peak_checkers,
                                                        sampler.checkers)
                    db.session.remove()
    everything_up = f"{figures.checks} up, 0 down"
    assert all(s.endswith(everything_up) for s in figures.summaries), figures.summaries
    stalled_down = f"{nodes * sites_per_pool} up, {nodes * stalled} down"
    assert all(s.endswith(stalled_down) for s in figures.stalled_summaries), \
        figures.stalled_summaries
    figures.load_end = load_average()
    return figures


def report(figures: Figures) -> list[str]:
    sweep = statistics.median(figures.sweeps)
    baseline = statistics.median(figures.baselines)
    goal = "MET" if (figures.checks < GOAL_CHECKS or sweep < GOAL_SWEEP_SECONDS) else "MISSED"
    return [
        f"site checks per sweep: {figures.checks} ({figures.nodes} nodes x "
        f"{figures.sites + figures.stalled_sites} sites), "
        f"SITE_CHECK_PARALLELISM={figures.parallelism}",
        "path measured: the site_checks job (plan from the database, HTTP/1.1 through a "
        "channel each node's pooled SSH connection forwards to its nginx, one row "
        "inserted per check)",
        f"first sweep (opens {figures.nodes} SSH connections): {figures.first_sweep:.2f} s",
        f"sweep wall time, median of {len(figures.sweeps)}: {sweep:.2f} s "
        f"(goal under {GOAL_SWEEP_SECONDS:g} s for {GOAL_CHECKS:,} checks: {goal})",
        f"sweep wall times: {', '.join(f'{s:.2f}' for s in figures.sweeps)} s",
        f"checks per second: {figures.checks / sweep:.0f}",
        f"baseline (bare concurrent HTTP, same requests, {figures.parallelism} threads, no "
        f"SSH, no database), median: {baseline:.2f} s",
        f"sweep / baseline: {sweep / baseline:.2f}",
        f"threads alive at most during a sweep (whole process): {figures.peak_threads}, "
        f"of which site-check threads: {figures.peak_checkers} (the others: one paramiko "
        f"transport per node connection, the app's and this bench's)",
        f"peak resident memory during the sweeps (whole process): {figures.peak_rss_mb:.0f} MB",
        *stalled_lines(figures),
        f"load average at start: {figures.load_start}; at end: {figures.load_end} "
        f"({os.cpu_count()} CPU cores shared with sshd and the nginx nodes)",
    ]


def stalled_lines(figures: Figures) -> list[str]:
    if not figures.stalled_sweeps:
        return []
    stalled_checks = figures.nodes * figures.stalled_sites
    return [
        f"with {figures.stalled_sites} more sites whose backend accepts and never answers "
        f"({stalled_checks} stalled checks, SITE_CHECK_TIMEOUT={figures.timeout:g} s, at "
        f"most {8 * figures.parallelism} parked at once): sweep wall times "
        f"{', '.join(f'{s:.2f}' for s in figures.stalled_sweeps)} s, median "
        f"{statistics.median(figures.stalled_sweeps):.2f} s",
        f"  threads alive at most then: {figures.stalled_peak_threads}, of which site-check "
        f"threads: {figures.stalled_peak_checkers}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--sites", type=int, default=100, help="sites in the pool")
    parser.add_argument("--repeat", type=int, default=3, help="timed sweeps")
    parser.add_argument("--parallelism", type=int, default=32,
                        help="SITE_CHECK_PARALLELISM (and the baseline's threads)")
    parser.add_argument("--stalled", type=int, default=0,
                        help="sites more whose backend stalls after the timed sweeps, "
                             "then swept again")
    parser.add_argument("--timeout", type=float, default=10.0, help="SITE_CHECK_TIMEOUT")
    args = parser.parse_args()
    for line in report(measure(args.nodes, args.sites, args.repeat, args.parallelism,
                               stalled=args.stalled, timeout=args.timeout)):
        print(line, flush=True)


if __name__ == "__main__":
    main()
