"""End-to-end deployment fan-out: one site change deployed to 1, 10, 50 and 200 real
nginx nodes over one real sshd on loopback, cold (no pooled SSH connection) and warm,
against a bare push to the same nodes measured in the same run.

Each measured run is ``sites.update_site`` (a new custom header value), then
``deployments.deploy_site`` and ``deployments.wait``.  Outside the timed section every
run is checked: the rollout and each node's deployment succeeded, and every node
answers for the site with the new header.  Each warm run is followed by one bare
push: a minimal paramiko program, in a process of its own, holding one transport and
one SFTP session per node as the app's pool does, that puts the changed site's server
block (under a name of its own, in a file the node's nginx.conf includes beside the
managed directory, which it never touches), runs the node's test and reload commands
in one channel and asks the node over HTTP until it serves the new value.

Prints cold and warm figures per fleet size against the goals (50 nodes warm under
1.5 s and under 3x one node, at most 1.3x the bare push) and the Ansible reference;
the median of each deployment step across nodes, in the order the rollouts recorded
them; control-plane and node CPU per node per deploy (goal under 8 ms for the control
plane); a DEPLOY_PARALLELISM sweep on the largest fleet; the nodes' memory; the API's
latency while a rollout to the largest fleet runs, next to the same requests idle; the
control plane's peak resident memory (goal under 300 MB up to 50 nodes, 400 MB above);
its open file descriptors before and after many warm deploys (they must not grow); the load
average at start and end; then a summary, one figure per line with its goal and
whether it was met.  CPU seconds (the control plane = this process; the nodes = sshd
sessions and what they ran, nginx masters and workers) are steadier than wall times
on a machine shared with other work.  The nodes load the ModSecurity and GeoIP2
modules as production nodes do (every ``nginx -t`` and reload pays for them); the
OWASP CRS is parsed only when a site has the WAF on.

    .venv/bin/python bench/deploy_fanout.py [--sizes 1,10,50,200] [--repeat 5]

Run it in a loopback-only network namespace (nodes use 127.0.1.x):
``unshare -n bash -c 'ip link set lo up; .venv/bin/python bench/deploy_fanout.py ...'``
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import json
import os
import pstats
import re
import resource
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import paramiko  # noqa: E402
from flask import Flask  # noqa: E402
from flask_migrate import upgrade  # noqa: E402
from sqlalchemy import event, text  # noqa: E402

from app import create_app  # noqa: E402
from app.engines.base import file_stem  # noqa: E402
from app.engines.nginx import ENGINE as NGINX  # noqa: E402
from app.extensions import db, ssh  # noqa: E402
from app.models import DeploymentStatus, Rollout, User  # noqa: E402
from app.services import deployments, nodes, sites, tokens  # noqa: E402
from tests import factories  # noqa: E402
from tests.fleet import FleetNode, register, release_dirs  # noqa: E402
from tests.nginx_node import NginxNode, allow_open_files, fetch  # noqa: E402
from tests.sshd import SshServer, below, process_children  # noqa: E402

DOMAIN = "fanout.example.com"
HEADER = "X-Bench"
# The bare push's own server block, in a file of its own beside the managed directory.
BARE_DOMAIN = "bare." + DOMAIN
BARE_FILE = "bench-bare.conf"
BARE_VALUE = "@@BARE_VALUE@@"
# The measurements of the Ansible playbook this replaces (seconds).
ANSIBLE = {1: 5.0, 10: 14.0, 50: 60.0}
# The fleet the wall-time goals are about (the largest size when it is not measured).
GOAL_FLEET = 50
GOAL_WARM_LARGEST = 1.5
GOAL_RATIO = 3.0
GOAL_BARE_RATIO = 1.3
GOAL_CPU_PER_NODE_MS = 8.0
# Peak resident memory of the control plane: up to 50 nodes, and above.
GOAL_RSS_MB = 300
GOAL_RSS_LARGE_MB = 400
# How long after a successful rollout a node may still serve the old value.
STALE_LIMIT = 10.0


def node_address(index: int) -> str:
    """127.0.1.1, 127.0.1.2, ... (clear of the tests' 127.0.0.x nodes)."""
    return f"127.0.{1 + index // 250}.{1 + index % 250}"


def rss_goal_mb(size: int) -> int:
    return GOAL_RSS_MB if size <= GOAL_FLEET else GOAL_RSS_LARGE_MB


def verdict(met: bool) -> str:
    return "MET" if met else "MISSED"


def load_average() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def start_node(address: str) -> NginxNode:
    """tests.fleet.start_nginx, with one more include in the operator's nginx.conf: the
    bare push's own file beside the managed directory (empty until the bare push
    writes it), so that the bare push never touches what the app manages."""
    node = NginxNode(address=address)
    empty = NGINX.render(node.spec, [])
    node.write(empty)
    bare = node.root / BARE_FILE
    bare.write_text("# the deploy_fanout bench's bare push writes this file\n")
    bare.chmod(0o644)
    node.write_main_conf(f"{empty.include_line}\n    include {bare};")
    node.start()
    return node


def memory_mb(pids: list[int]) -> tuple[float, float]:
    """(RSS, PSS) of these processes summed, in MB (PSS shares pages fairly: the sum
    is what they cost the machine together)."""
    rss = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            continue
    return rss / 1024, pss / 1024


def mem_available_mb() -> float:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def code_version() -> str:
    """The commit measured, and whether app/ has uncommitted changes (read-only git)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "app"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head or 'unknown'}{' (app/ has uncommitted changes)' if dirty else ''}"


def start_backend() -> tuple[subprocess.Popen[str], int]:
    """tests.nginx_node.Backend in a process of its own, so that its threads, sockets
    and CPU do not count as the control plane's; returns the process and its port."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = ("import sys, time; sys.path.insert(0, sys.argv[1]); "
              "from tests.nginx_node import Backend; backend = Backend('fanout'); "
              "print(backend.port, flush=True); time.sleep(1e9)")
    process = subprocess.Popen([sys.executable, "-c", script, root], stdout=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.strip().isdigit():
        process.kill()
        process.wait()
        raise RuntimeError("the backend did not start")
    return process, int(line)


def rss_kb() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def fd_kinds() -> Counter[str]:
    """Open descriptors by what they point at (socket, pipe, file name...)."""
    kinds: Counter[str] = Counter()
    for fd in os.listdir("/proc/self/fd"):
        try:
            where = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        kinds[where.split(":")[0] if ":" in where else os.path.basename(where)] += 1
    return kinds


def thread_names() -> Counter[str]:
    return Counter(t.name.rstrip("0123456789_-") for t in threading.enumerate())


def thread_cpu() -> dict[int, float]:
    """CPU seconds of each live thread of this process, by native thread id."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
    return seconds


def process_cpu(pids: list[int]) -> float:
    """CPU seconds of these processes and of their children they reaped."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15])
    return total / ticks


def thread_group(thread: threading.Thread) -> str:
    if isinstance(thread, paramiko.Transport):
        return "paramiko transport threads (packet reading, decryption)"
    if thread is threading.main_thread():
        return "main thread (update_site, deploy_site, wait)"
    if thread.name.startswith("ssh-pool-reaper"):
        return "SSH pool reaper"
    return f"other ({thread.name.rstrip('0123456789_-')})"


class Statements:
    """Counts SQL statements by verb and commits on the app's engine."""

    def __init__(self) -> None:
        self.verbs: Counter[str] = Counter()
        self.commits = 0
        self._lock = threading.Lock()

    def _on_execute(self, conn: object, cursor: object, statement: str, *rest: object) -> None:
        with self._lock:
            self.verbs[statement.lstrip().split(None, 1)[0].upper()] += 1

    def _on_commit(self, conn: object) -> None:
        with self._lock:
            self.commits += 1

    @contextmanager
    def counting(self) -> Iterator[None]:
        event.listen(db.engine, "before_cursor_execute", self._on_execute)
        event.listen(db.engine, "commit", self._on_commit)
        try:
            yield
        finally:
            event.remove(db.engine, "before_cursor_execute", self._on_execute)
            event.remove(db.engine, "commit", self._on_commit)


def commit_latency(samples: int = 200) -> float:
    """Median seconds of one small write transaction on the app's database (what each
    progress update, lease renewal and finish costs, one writer at a time)."""
    with db.engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS bench_probe (id INTEGER PRIMARY KEY, "
                          "v INTEGER)"))
        conn.execute(text("INSERT OR REPLACE INTO bench_probe (id, v) VALUES (1, 0)"))
    times = []
    for n in range(samples):
        started = time.perf_counter()
        with db.engine.begin() as conn:
            conn.execute(text("UPDATE bench_probe SET v = :v WHERE id = 1"), {"v": n})
        times.append(time.perf_counter() - started)
    return statistics.median(times)


WAITS = ("acquire", "SimpleQueue", "poll", "sleep", "'send'", "'recv", "'connect'",
         "'sendall'", "select", "'wait'", "getaddrinfo", "socket.close")


def package_times(stats: pstats.Stats) -> Counter[str]:
    """Internal time by package, leaving out functions that block."""
    totals: Counter[str] = Counter()
    for (filename, _line, name), row in stats.stats.items():  # type: ignore[attr-defined]
        tottime = row[2]
        if filename == "~":
            if any(w in name for w in WAITS):
                continue
            if "sqlite3" in name:
                package = "sqlite3 calls (execute, commit, fetch; include lock waits)"
            elif "cryptography" in name:
                package = "cryptography"
            else:
                package = "other builtins"
        elif "/site-packages/" in filename:
            package = filename.split("/site-packages/", 1)[1].split("/", 1)[0]
        elif "/app/" in filename:
            package = "app"
        else:
            package = "standard library (Python code)"
        totals[package] += tottime
    return totals


def profile_deploy(bench: Bench, active: list[FleetNode], top: int) -> None:
    """One more warm deploy with every thread it starts under cProfile, CPU per thread
    group from /proc, and the SQL it runs."""
    profiles: list[cProfile.Profile] = []
    guard = threading.Lock()

    def start_profiler(frame: object, event_name: str, arg: object) -> None:
        profiler = cProfile.Profile()
        with guard:
            profiles.append(profiler)
        profiler.enable()  # replaces this hook for the rest of the thread

    statements = Statements()
    sshd_before, nginx_before = (process_cpu(p) for p in bench.remote_pids())
    groups_before = {t.native_id: thread_group(t) for t in threading.enumerate()}
    cpu_before, total_before = thread_cpu(), cpu_self()
    threading.setprofile(start_profiler)  # type: ignore[arg-type]
    try:
        with statements.counting():
            run, value = bench.deploy_change()
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]
    cpu_after, total_after = thread_cpu(), cpu_self()
    # Reaped sessions count in their sshd's children time; ended workers in their
    # master's (processes gone meanwhile are missed: a lower bound).
    sshd_after, nginx_after = (process_cpu(p) for p in bench.remote_pids())
    bench.check(run, active, value)
    print(f"\nprofile of one warm {len(active)}-node deploy ({run.seconds:.3f} s under "
          f"cProfile; {total_after - total_before:.2f} CPU s in this process):")
    by_group: Counter[str] = Counter()
    for tid, seconds in cpu_after.items():
        if tid in groups_before:
            by_group[groups_before[tid]] += seconds - cpu_before.get(tid, 0.0)
    ended = (total_after - total_before) - sum(by_group.values())
    by_group["rollout thread + deploy workers (ended)"] += max(0.0, ended)
    for group, seconds in by_group.most_common():
        if seconds >= 0.005:
            print(f"  CPU {seconds:6.2f} s  {group}")
    print(f"  CPU {sshd_after - sshd_before:6.2f} s  sshd sessions (SFTP, the shell, nginx -t, "
          f"nginx -s reload; the nodes' side, on this machine's cores)")
    print(f"  CPU {nginx_after - nginx_before:6.2f} s  nginx masters and workers (reloading)")
    writes = sum(n for verb, n in statements.verbs.items() if verb != "SELECT")
    print(f"  SQL: {sum(statements.verbs.values())} statements ({dict(statements.verbs)}), "
          f"{statements.commits} commits, {writes} writes = {writes / len(active):.1f} "
          f"per node; one small write transaction on this database (median of 200, "
          f"alone): {commit_latency() * 1000:.2f} ms")
    stats = pstats.Stats(profiles[0], stream=sys.stdout) if profiles else None
    if stats is None:
        return
    for profiler in profiles[1:]:
        stats.add(profiler)
    print("  time inside functions (cProfile tottime, all deploy threads) by package; "
          "waits (locks, queues, poll, sleep, socket calls) left out, SQLite's own calls "
          "apart as they include waiting for its write lock:")
    for package, seconds in package_times(stats).most_common(12):
        print(f"    {seconds:7.2f} s  {package}")
    print(f"  cProfile, {len(profiles)} threads merged, top {top} by internal time "
          f"(wall time of threads that wait shows up in lock/socket functions):")
    stats.sort_stats("tottime").print_stats(top)
    print(f"  cProfile, the app's functions by cumulative time (thread-seconds summed over "
          f"{len(active)} nodes' workers; waits included):")
    stats.sort_stats("cumulative").print_stats(r"/app/", top)


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_machine() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


class RssSampler:
    """Samples VmRSS in a thread; ``window()`` gives the peak within a section."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak_kb = rss_kb()
        self._window_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            value = rss_kb()
            self.peak_kb = max(self.peak_kb, value)
            self._window_kb = max(self._window_kb, value)

    @contextmanager
    def window(self, into: list[int]) -> Iterator[None]:
        self._window_kb = rss_kb()
        try:
            yield
        finally:
            into.append(max(self._window_kb, rss_kb()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Run:
    seconds: float
    update: float  # sites.update_site
    launch: float  # deploy_site until it returns (rollout rows, thread started)
    rollout_id: int
    cpu_self: float
    cpu_machine_busy: float  # fraction of all cores busy during the run
    finished_at: float  # perf_counter when wait() returned
    cpu_sshd: float  # the nodes' side: sshd sessions and what they ran (nginx -t, reload)
    cpu_nginx: float  # the nodes' side: nginx masters reloading, workers starting


@dataclass
class BareRun:
    seconds: float  # the bare push's own wall time, all nodes in parallel
    cpu_self: float  # the bare push's process
    cpu_sshd: float
    cpu_nginx: float
    put: float  # medians across nodes: SFTP write
    test_reload: float  # one channel: the test command && the reload command
    http: float  # until the node answered the new value
    stale: int  # answers with the previous value before the new one, all nodes


@dataclass
class SizeResult:
    size: int
    cold: Run | None = None
    warm: list[Run] = field(default_factory=list)
    bare: list[BareRun] = field(default_factory=list)
    bare_connect: float = 0.0
    rss_kb: list[int] = field(default_factory=list)  # peak VmRSS of each warm deploy
    # The steps the rollouts recorded, in the order they ran (first seen).
    step_order: list[str] = field(default_factory=list)
    upload_modes: Counter[str] = field(default_factory=Counter)
    steps: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    node_totals: list[float] = field(default_factory=list)
    slowest_node: list[float] = field(default_factory=list)
    before_first: list[float] = field(default_factory=list)  # rollout start -> 1st node
    after_last: list[float] = field(default_factory=list)  # last node -> rollout end
    # NodeDeployment.started_at -> finished_at minus the steps: the per-node database
    # writes outside any step (progress, lease renewals, version row, finish).
    outside_steps: list[float] = field(default_factory=list)
    node_walls: list[float] = field(default_factory=list)


class Bench:
    def __init__(self, app: Flask, client: User, admin: User, fleet: list[FleetNode],
                 site_id: int, sshd: SshServer) -> None:
        self.app = app
        self.sshd = sshd
        self.client = client
        self.admin = admin
        self.fleet = fleet
        self.site_id = site_id
        self.counter = 0
        self.bare_counter = 0
        self.enabled = {node.id: True for node in fleet}
        self.checks = 0  # node answers checked after a successful rollout
        self.checked_runs: set[int] = set()  # rollouts checked over HTTP
        self.stale_runs: set[int] = set()  # ... where a node first served the old value
        self.stale_answers = 0
        self.stale_delays: list[float] = []  # wait() returned -> a stale node caught up

    def activate(self, size: int) -> list[FleetNode]:
        """Enable the first ``size`` nodes of the pool, disable the rest."""
        for index, node in enumerate(self.fleet):
            wanted = index < size
            if self.enabled[node.id] != wanted:
                nodes.set_enabled(self.admin, node.id, wanted)
                self.enabled[node.id] = wanted
        return self.fleet[:size]

    def remote_pids(self) -> tuple[list[int], list[int]]:
        """The nodes' processes: sshd and every session below it; nginx masters and
        their workers."""
        children = process_children()
        sshd = self.sshd.process.pid if self.sshd.process else 0
        masters = [n.nginx.process.pid for n in self.fleet if n.nginx.process]
        workers = [pid for master in masters for pid in below(children, master)]
        return [sshd, *below(children, sshd)], masters + workers

    def deploy_change(self) -> tuple[Run, str]:
        """One timed end-to-end deploy of a real change; returns it and the value."""
        self.counter += 1
        value = f"v{self.counter}"
        # Outside the timed section: reading /proc costs time of its own.
        sshd0, nginx0 = (process_cpu(p) for p in self.remote_pids())
        cpu0, (busy0, total0) = cpu_self(), cpu_machine()
        started = time.perf_counter()
        sites.update_site(self.client, self.site_id, {"headers": {HEADER: value}})
        updated = time.perf_counter()
        rollout = deployments.deploy_site(self.client, self.site_id)
        launched = time.perf_counter()
        rollout = deployments.wait(rollout.id, timeout=600)
        finished = time.perf_counter()
        busy1, total1 = cpu_machine()
        cpu1 = cpu_self()
        sshd1, nginx1 = (process_cpu(p) for p in self.remote_pids())
        run = Run(seconds=finished - started, update=updated - started,
                  launch=launched - updated, rollout_id=rollout.id,
                  cpu_self=cpu1 - cpu0,
                  cpu_machine_busy=(busy1 - busy0) / max(1, total1 - total0),
                  finished_at=finished, cpu_sshd=sshd1 - sshd0, cpu_nginx=nginx1 - nginx0)
        return run, value

    def check(self, run: Run, active: list[FleetNode], value: str, *,
              http: bool = True) -> Rollout:
        """The rollout succeeded on every active node, and each serves the change."""
        db.session.expire_all()
        rollout = db.session.get(Rollout, run.rollout_id)
        assert rollout is not None
        failed = [f"{d.node_name}: {d.error}" for d in rollout.deployments
                  if d.status != DeploymentStatus.SUCCEEDED]
        assert rollout.status == DeploymentStatus.SUCCEEDED, (
            f"{rollout.error or 'the rollout failed'}; {len(failed)} node(s) failed, "
            f"the first: {failed[:3]}")
        statuses = {d.node_id: d.status for d in rollout.deployments}
        assert set(statuses) == {node.id for node in active}, "not every node was deployed to"
        assert set(statuses.values()) == {DeploymentStatus.SUCCEEDED}, statuses
        if http:
            self.checked_runs.add(run.rollout_id)
            for node in active:
                self.visible(run, node, value)
        return rollout

    def visible(self, run: Run, node: FleetNode, value: str) -> None:
        """The node serves the new value.  The rollout may report success while the
        node still answers with the previous configuration (an old worker, right after
        ``nginx -s reload``): count that, and how long after ``wait`` returned the
        change became visible (bounded)."""
        self.checks += 1
        stale = 0
        deadline = time.perf_counter() + STALE_LIMIT
        while True:
            answer = fetch(node.nginx, DOMAIN)
            assert answer.status == 200, (node.name, answer.status)
            got = answer.headers.get(HEADER.lower())
            if got == value:
                break
            stale += 1
            assert time.perf_counter() < deadline, (
                f"{node.name} still serves {HEADER}: {got!r}, not {value!r}, "
                f"{STALE_LIMIT:g} s after the rollout succeeded")
            time.sleep(0.005)
        if stale:
            self.stale_answers += stale
            self.stale_runs.add(run.rollout_id)
            self.stale_delays.append(time.perf_counter() - run.finished_at)

    def record_steps(self, result: SizeResult, rollout: Rollout) -> None:
        totals = []
        for deployment in rollout.deployments:
            total = 0.0
            merge_order(result.step_order, [step["step"] for step in deployment.steps or []])
            for step in deployment.steps or []:
                result.steps[step["step"]].append(step["seconds"])
                total += step["seconds"]
                if step["step"] == "upload":
                    result.upload_modes[step.get("mode", "?")] += 1
            totals.append(total)
            if deployment.started_at and deployment.finished_at:
                wall = (deployment.finished_at - deployment.started_at).total_seconds()
                result.node_walls.append(wall)
                result.outside_steps.append(wall - total)
        result.node_totals.extend(totals)
        result.slowest_node.append(max(totals))
        starts = [d.started_at for d in rollout.deployments if d.started_at]
        ends = [d.finished_at for d in rollout.deployments if d.finished_at]
        if rollout.started_at and starts:
            result.before_first.append((min(starts) - rollout.started_at).total_seconds())
        if rollout.finished_at and ends:
            result.after_last.append((rollout.finished_at - max(ends)).total_seconds())


    def bare_push(self, bare: BarePush) -> BareRun:
        """One bare push to the nodes it holds, with the nodes' CPU around it."""
        self.bare_counter += 1
        sshd0, nginx0 = (process_cpu(p) for p in self.remote_pids())
        reply = bare.push(f"b{self.bare_counter}")
        sshd1, nginx1 = (process_cpu(p) for p in self.remote_pids())
        return BareRun(seconds=reply["seconds"], cpu_self=reply["cpu"],
                       cpu_sshd=sshd1 - sshd0, cpu_nginx=nginx1 - nginx0,
                       put=median(reply["put"]), test_reload=median(reply["test_reload"]),
                       http=median(reply["http"]), stale=sum(reply["stale"]))


RESPONSIVE_PATHS = ("/api/v1/sites?per_page=20", "/api/v1/deployments?per_page=20", "/health")


def request_latencies(app: Flask, token: str, until: threading.Event | None,
                      count: int = 60) -> list[float]:
    """Seconds of each API request, one after another on one thread: ``count`` of them,
    or until ``until`` is set.  The app's request path in the process that runs the
    rollout, as a gunicorn worker serving requests beside its rollout threads is."""
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    index = 0
    while (until is None and index < count) or (until is not None and not until.is_set()):
        path = RESPONSIVE_PATHS[index % len(RESPONSIVE_PATHS)]
        started = time.perf_counter()
        reply = client.get(path, headers=headers)
        latencies.append(time.perf_counter() - started)
        if reply.status_code >= 400 and path != "/health":
            raise RuntimeError(f"GET {path} answered {reply.status_code}")
        index += 1
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def responsiveness(bench: Bench, active: list[FleetNode], token: str) -> str:
    """API latencies while a warm rollout to ``active`` runs, next to the same requests
    with nothing running, measured now; returns the summary line."""
    idle = request_latencies(bench.app, token, None)
    done = threading.Event()
    during: list[float] = []

    def poll() -> None:
        during.extend(request_latencies(bench.app, token, done))

    thread = threading.Thread(target=poll, name="bench-api")
    thread.start()
    try:
        run, value = bench.deploy_change()
    finally:
        done.set()
        thread.join()
    bench.check(run, active, value)
    line = (f"API while a rollout to {len(active)} nodes runs ({run.seconds:.2f} s, "
            f"{len(during)} requests): p50 {1000 * percentile(during, 0.5):.0f} ms, p95 "
            f"{1000 * percentile(during, 0.95):.0f} ms, max {1000 * max(during):.0f} ms; "
            f"idle, same requests: p50 {1000 * percentile(idle, 0.5):.0f} ms, p95 "
            f"{1000 * percentile(idle, 0.95):.0f} ms")
    print(line, flush=True)
    return line


def merge_order(order: list[str], names: list[str]) -> None:
    """Add the step names not seen yet to ``order``, each after the step that ran
    before it (a node's first deployment has ``adopt`` and ``swap`` after ``upload``)."""
    previous: str | None = None
    for name in names:
        if name not in order:
            # ``previous`` is in ``order`` by now: seen before, or inserted just now.
            order.insert(0 if previous is None else order.index(previous) + 1, name)
        previous = name


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- the bare push baseline ------------------------------------------------------------
# A minimal paramiko program doing the least a push of one changed file can do, in a
# process of its own so that its CPU, memory and descriptors never count as the
# control plane's.  The bench talks to it with one JSON line each way.

BARE_DESCRIPTION = (
    "bare push: a minimal paramiko program (a process of its own), warm: one transport "
    "and one SFTP session per node opened beforehand and kept, as the app's pool holds "
    "them, nodes in parallel on DEPLOY_PARALLELISM threads; per node: SFTP put of the "
    "changed site's server block (the text the app deployed to that node, with server "
    f"name {BARE_DOMAIN} and a new {HEADER} value) into {BARE_FILE}, which the node's "
    "nginx.conf includes beside the managed directory's rpcc.conf; one exec channel "
    "running the node's test command && its reload command; then HTTP GET for "
    f"{BARE_DOMAIN} until it answers the new value (answers from old workers retried). "
    "No lock, render, database, release directory, digest check, rollback path or probe: "
    "the managed directory is untouched, so the app's next deployment still builds its "
    "release incrementally from the live one (upload modes below)")


def bare_template(site_conf: str) -> str:
    """The site's server block as the bare push's own: its server name and log files
    renamed, the header's value a placeholder."""
    text = site_conf.replace(DOMAIN, BARE_DOMAIN)
    text, count = re.subn(rf'(add_header {HEADER} )"[^"]*"', rf'\g<1>"{BARE_VALUE}"', text)
    if count != 1:
        raise RuntimeError(f"the site's conf has {count} {HEADER} headers, not one")
    return text


class BareNode:
    """One node as the bare push holds it: an authenticated transport and an SFTP
    session, both kept open between pushes."""

    def __init__(self, spec: dict[str, Any], key: paramiko.PKey, host_key: str) -> None:
        self.spec = spec
        sock = socket.create_connection((spec["ssh_host"], spec["ssh_port"]), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport = paramiko.Transport(sock)
        try:
            self.transport.start_client(timeout=10)
            presented = self.transport.get_remote_server_key()
            if f"{presented.get_name()} {presented.get_base64()}" != host_key:
                raise RuntimeError(f"{spec['address']}: unexpected host key")
            self.transport.auth_publickey("root", key)
            self.sftp = paramiko.SFTPClient.from_transport(self.transport)
        except BaseException:
            self.transport.close()
            raise
        assert self.sftp is not None
        self.command = " && ".join(shlex.join(shlex.split(spec[name]))
                                   for name in ("test", "reload"))

    def push(self, value: str) -> tuple[float, float, float, int]:
        """Put, test && reload, see the new value; the seconds of each, stale answers."""
        started = time.perf_counter()
        with self.sftp.open(self.spec["path"], "wb") as handle:
            handle.set_pipelined(True)  # close() waits for every write's answer
            handle.write(self.spec["template"].replace(BARE_VALUE, value).encode())
        put = time.perf_counter()
        channel = self.transport.open_session(timeout=10)
        try:
            channel.settimeout(60)
            channel.exec_command(self.command)
            output = channel.makefile("rb").read() + channel.makefile_stderr("rb").read()
            status = channel.recv_exit_status()
        finally:
            channel.close()
        if status != 0:
            raise RuntimeError(f"{self.spec['address']}: test && reload exited {status}: "
                               f"{output.decode(errors='replace')[-1000:]}")
        reloaded = time.perf_counter()
        stale = 0
        while not self.answers(value):
            stale += 1
            if time.perf_counter() - reloaded > STALE_LIMIT:
                raise RuntimeError(f"{self.spec['address']}: {BARE_DOMAIN} does not answer "
                                   f"{value} {STALE_LIMIT:g} s after the reload")
            time.sleep(0.002)
        return put - started, reloaded - put, time.perf_counter() - reloaded, stale

    def answers(self, value: str) -> bool:
        conn = http.client.HTTPConnection(self.spec["address"], self.spec["port"], timeout=10)
        try:
            conn.request("GET", "/", headers={"Host": BARE_DOMAIN, "User-Agent": "bare/1"})
            response = conn.getresponse()
            response.read()
            return response.status == 200 and response.getheader(HEADER) == value
        finally:
            conn.close()

    def close(self) -> None:
        self.sftp.close()
        self.transport.close()


def bare_worker() -> None:
    """The bare push's process: connect, push (repeatedly), disconnect, on request."""
    held: list[BareNode] = []
    workers: ThreadPoolExecutor | None = None

    def disconnect() -> None:
        nonlocal workers
        for node in held:
            node.close()
        held.clear()
        if workers is not None:
            workers.shutdown()
            workers = None

    for line in sys.stdin:
        message = json.loads(line)
        reply: dict[str, Any] = {}
        try:
            started = time.perf_counter()
            if message["do"] == "connect":
                disconnect()
                key = paramiko.Ed25519Key.from_private_key_file(message["key"])
                with ThreadPoolExecutor(16) as connecting:
                    specs = message["nodes"]
                    held.extend(connecting.map(BareNode, specs, [key] * len(specs),
                                               [message["host_key"]] * len(specs)))
                workers = ThreadPoolExecutor(message["workers"])
                reply["seconds"] = time.perf_counter() - started
            elif message["do"] == "push":
                assert workers is not None
                cpu0 = cpu_self()
                done = list(workers.map(BareNode.push, held, [message["value"]] * len(held)))
                reply.update(seconds=time.perf_counter() - started, cpu=cpu_self() - cpu0,
                             put=[d[0] for d in done], test_reload=[d[1] for d in done],
                             http=[d[2] for d in done], stale=[d[3] for d in done])
            elif message["do"] == "disconnect":
                disconnect()
        except Exception:
            reply = {"error": traceback.format_exc()}
        print(json.dumps(reply), flush=True)
    disconnect()


class BarePush:
    """The bench's side of the bare push's process."""

    def __init__(self, sshd: SshServer) -> None:
        self.sshd = sshd
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--bare-worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def _ask(self, **message: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the bare push's process ended")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"the bare push failed:\n{reply['error']}")
        return reply

    def connect(self, active: list[FleetNode], workers: int) -> float:
        """Hold a connection to each of these nodes (replacing those held); the
        seconds that took (not part of any push)."""
        specs = []
        for node in active:
            conf = node.nginx.config_dir / "sites" / f"{file_stem(DOMAIN)}.conf"
            specs.append({
                "ssh_host": self.sshd.host, "ssh_port": self.sshd.port,
                "path": str(node.nginx.root / BARE_FILE),
                "template": bare_template(conf.read_text()),
                "test": node.nginx.spec.test_command, "reload": node.nginx.spec.reload_command,
                "address": node.nginx.address, "port": node.nginx.http_port,
            })
        reply = self._ask(do="connect", key=str(self.sshd.client_key_path),
                          host_key=self.sshd.host_key_line, nodes=specs, workers=workers)
        return float(reply["seconds"])

    def push(self, value: str) -> dict[str, Any]:
        return self._ask(do="push", value=value)

    def disconnect(self) -> None:
        self._ask(do="disconnect")

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def print_steps(result: SizeResult) -> None:
    runs = len(result.warm)
    print(f"\nper-step seconds, {result.size} node(s), {runs} warm runs "
          f"(median / max across nodes and runs):")
    for name in result.step_order:
        values = result.steps.get(name, [])
        if values:
            print(f"  {name:<8} median {median(values):7.3f}   max {max(values):7.3f}")
    print(f"  {'node sum':<8} median {median(result.node_totals):7.3f}   "
          f"max {max(result.node_totals):7.3f}")
    print(f"  {'node wall':<8} median {median(result.node_walls):7.3f}   "
          f"max {max(result.node_walls, default=float('nan')):7.3f}   "
          f"(NodeDeployment.started_at -> finished_at)")
    print(f"  {'outside':<8} median {median(result.outside_steps):7.3f}   "
          f"max {max(result.outside_steps, default=float('nan')):7.3f}   "
          f"(node wall minus its steps: progress/lease/finish DB writes)")
    warm = result.warm
    print(f"  rollout wall (update+deploy+wait) median {median([r.seconds for r in warm]):.3f} "
          f"= update_site {median([r.update for r in warm]):.3f} + deploy_site call "
          f"{median([r.launch for r in warm]):.3f} + run; slowest node median "
          f"{median(result.slowest_node):.3f}")
    print(f"  rollout start -> first node start median {median(result.before_first):.3f}; "
          f"last node end -> rollout end (conclude, site status) median "
          f"{median(result.after_last):.3f}")
    print(f"  upload modes: {dict(result.upload_modes)} (incremental: the node still held "
          f"the release the app last sent, bare pushes in between included)")
    print(f"  control-plane CPU per deploy median {median([r.cpu_self for r in warm]):.3f} s; "
          f"nodes' side median {median([r.cpu_sshd + r.cpu_nginx for r in warm]):.3f} s "
          f"(sshd sessions {median([r.cpu_sshd for r in warm]):.3f} s, nginx "
          f"{median([r.cpu_nginx for r in warm]):.3f} s); machine CPU busy during deploys "
          f"median {100 * median([r.cpu_machine_busy for r in warm]):.0f}% of "
          f"{os.cpu_count()} cores")


def print_bare(results: list[SizeResult], goal_fleet: int, repeat: int) -> float:
    """The app's one-site change against the bare push, per size; returns the ratio at
    the goal fleet."""
    print(f"\napp vs bare push, warm, median of {repeat} each, measured in the same run "
          f"(each warm app deploy above was followed by one bare push to the same nodes):")
    print(f"  {BARE_DESCRIPTION}")
    print(f"{'nodes':>5} {'app s':>8} {'bare s':>8} {'bare min':>9} {'app/bare':>9} "
          f"{'put':>7} {'test+rl':>8} {'http':>7} {'stale':>6} {'connect s':>10} "
          f"{'CPU ms/node app|bare':>21} {'nodes ms/node app|bare':>23}")
    ratio_at_goal = float("nan")
    for result in results:
        app_s = median([r.seconds for r in result.warm])
        bare_s = median([r.seconds for r in result.bare])
        ratio = app_s / bare_s
        if result.size == goal_fleet:
            ratio_at_goal = ratio
        cpu_app = 1000 * median([r.cpu_self for r in result.warm]) / result.size
        cpu_bare = 1000 * median([r.cpu_self for r in result.bare]) / result.size
        nodes_app = 1000 * median([r.cpu_sshd + r.cpu_nginx for r in result.warm]) / result.size
        nodes_bare = 1000 * median([r.cpu_sshd + r.cpu_nginx for r in result.bare]) / result.size
        print(f"{result.size:>5} {app_s:8.3f} {bare_s:8.3f} "
              f"{min(r.seconds for r in result.bare):9.3f} {ratio:8.2f}x "
              f"{median([r.put for r in result.bare]):7.3f} "
              f"{median([r.test_reload for r in result.bare]):8.3f} "
              f"{median([r.http for r in result.bare]):7.3f} "
              f"{sum(r.stale for r in result.bare):>6} {result.bare_connect:10.2f} "
              f"{cpu_app:10.1f} |{cpu_bare:8.1f}  {nodes_app:11.1f} |{nodes_bare:8.1f}")
    print("  (bare put / test+rl / http: medians across nodes of the SFTP write, the "
          "test && reload channel, and the HTTP requests until the new value; stale: "
          "answers with the previous value, all runs; connect: opening its connections, "
          "not timed in a push)")
    print(f"goal app/bare at {goal_fleet} nodes <= {GOAL_BARE_RATIO:g}x: {ratio_at_goal:.2f}x "
          f"-> {verdict(ratio_at_goal <= GOAL_BARE_RATIO)}")
    return ratio_at_goal


def print_nodes_memory(bench: Bench, size: int) -> str:
    """What the nodes cost the machine in memory, with every connection held."""
    children = process_children()
    sshd = bench.sshd.process.pid if bench.sshd.process else 0
    masters = [n.nginx.process.pid for n in bench.fleet if n.nginx.process]
    nginx = masters + [pid for master in masters for pid in below(children, master)]
    sessions = below(children, sshd)
    nginx_rss, nginx_pss = memory_mb(nginx)
    sshd_rss, sshd_pss = memory_mb(sessions)
    line = (f"nodes' memory with {size} nodes active and the app's and the bare push's "
            f"connections held: nginx {len(nginx)} processes (masters and workers of all "
            f"{len(masters)} nodes) PSS {nginx_pss:.0f} MB (RSS sum {nginx_rss:.0f} MB), "
            f"{nginx_pss / max(1, len(masters)):.1f} MB per node; sshd sessions "
            f"{len(sessions)} processes PSS {sshd_pss:.0f} MB (RSS sum {sshd_rss:.0f} MB); "
            f"machine MemAvailable {mem_available_mb():.0f} MB")
    print(line, flush=True)
    return line


def main() -> None:
    if sys.argv[1:] == ["--bare-worker"]:
        bare_worker()
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,50,200", help="fleet sizes, comma separated")
    parser.add_argument("--repeat", type=int, default=5,
                        help="warm runs per size (each followed by one bare push)")
    parser.add_argument("--parallelism", default="32",
                        help="DEPLOY_PARALLELISM for the main table (the app default: 32)")
    parser.add_argument("--sweep", default="8,16,32,50",
                        help="DEPLOY_PARALLELISM values tried on the largest fleet ('' skips)")
    parser.add_argument("--fd-deploys", type=int, default=50,
                        help="warm deploys between the two open-descriptor counts")
    parser.add_argument("--fd-nodes", type=int, default=0,
                        help="fleet size for the descriptor check (default: the largest)")
    parser.add_argument("--profile", choices=["auto", "always", "never"], default="auto",
                        help=f"profile one warm deploy to {GOAL_FLEET} nodes (or the largest "
                             f"fleet below) (auto: when a goal is missed)")
    parser.add_argument("--db-pool", type=int, default=0,
                        help="SQLAlchemy pool_size (overflow 10) for the app; default 0: the "
                             "app's own sizing, as in production")
    args = parser.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    largest = sizes[-1]
    parallelism = int(args.parallelism)
    sweep = [int(s) for s in args.sweep.split(",") if s.strip()]
    load_start = load_average()
    print(f"load average at start: {load_start} ({os.cpu_count()} CPU cores)", flush=True)
    # The control plane holds a socket per node; the nginx it starts inherit the limit.
    wanted_files = 4096 + 8 * largest
    files_limit = allow_open_files(wanted_files)
    print(f"open files limit (RLIMIT_NOFILE soft) of the bench and of the nginx it starts: "
          f"{files_limit}" + ("" if files_limit >= wanted_files else
                              f" (wanted {wanted_files}; the hard limit caps it)"))

    workdir = tempfile.mkdtemp(prefix="rpcc-bench-deploy-")
    overrides: dict[str, object] = {
        "SQLALCHEMY_DATABASE_URI": "sqlite:///" + os.path.join(workdir, "bench.db"),
        "RATELIMIT_ENABLED": False, "WTF_CSRF_ENABLED": False,
        "DEPLOY_PARALLELISM": parallelism,
    }
    db_pool = args.db_pool
    if db_pool:
        overrides["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_pre_ping": True, "pool_size": db_pool,
                                                  "max_overflow": 10}
    app = create_app("testing", overrides)
    print(f"code: {code_version()}")
    print("database connection pool: " + (f"pool_size {db_pool} + overflow 10" if db_pool
                                          else "the app's default"))
    sshd: SshServer | None = None
    started: list[NginxNode] = []
    backend: subprocess.Popen[str] | None = None
    bare: BarePush | None = None
    sampler = RssSampler()
    try:
        with app.app_context():
            upgrade()
            admin = factories.make_user("admin", "benchadmin")
            client = factories.make_user("client", "benchclient")
            t0 = time.perf_counter()
            sshd = SshServer()
            try:
                for index in range(largest):
                    started.append(start_node(node_address(index)))
            except (RuntimeError, OSError) as exc:
                print(f"could not start nginx node {len(started) + 1} of {largest} "
                      f"({node_address(len(started))}; MemAvailable "
                      f"{mem_available_mb():.0f} MB, {open_fds()} descriptors open of "
                      f"{files_limit}): {exc}")
                if not started:
                    raise
                sizes = sorted({s for s in sizes if s <= len(started)} | {len(started)})
                largest = len(started)
                print(f"going on with {largest} nodes, sizes {sizes}")
            fd_nodes = min(args.fd_nodes or largest, largest)
            goal_fleet = GOAL_FLEET if GOAL_FLEET in sizes else largest
            fleet = [register(admin, nginx, f"edge-{i:03d}", sshd.port, sshd.client_key_text)
                     for i, nginx in enumerate(started)]
            backend, backend_port = start_backend()
            site = factories.make_site(client, DOMAIN, backends=[
                {"host": "127.0.0.1", "port": backend_port}], headers={HEADER: "v0"})
            bare = BarePush(sshd)
            print(f"fleet: 1 sshd (port {sshd.port}, {sshd.root}), {largest} nginx nodes on "
                  f"{node_address(0)}..{node_address(largest - 1)}, 1 backend; "
                  f"started in {time.perf_counter() - t0:.1f} s; "
                  f"{os.cpu_count()} CPU cores shared by control plane, sshd and nginx")
            load = load_average()
            print(f"load average before the bench: {load} (other work on this machine "
                  f"competes for the same cores)")
            bench = Bench(app, client, admin, fleet, site.id, sshd)

            # The first deployment ever adopts each node's directory and pins its host
            # key: a one-off, reported but not part of the figures.
            first, value = bench.deploy_change()
            bench.check(first, fleet, value)
            print(f"first deploy to all {largest} nodes (adopt + pin host keys): "
                  f"{first.seconds:.2f} s")
            first_rollout = db.session.get(Rollout, first.rollout_id)
            assert first_rollout is not None
            first_steps = SizeResult(largest)
            bench.record_steps(first_steps, first_rollout)
            print("  its steps (median across nodes): " + ", ".join(
                f"{name} {median(first_steps.steps[name]):.3f} s"
                for name in first_steps.step_order))
            crs = any("modsecurity_rules_file" in path.read_text()
                      for path in fleet[0].nginx.config_dir.rglob("*.conf"))
            print(f"nodes as in production: nginx.conf loads the ModSecurity and GeoIP2 "
                  f"modules (every nginx -t and reload pays for them); the OWASP CRS is "
                  f"{'parsed' if crs else 'not parsed (no site of the pool has the WAF on)'}")

            results: list[SizeResult] = []
            memory_line = ""
            for size in sizes:
                active = bench.activate(size)
                result = SizeResult(size)
                ssh.reset(app)  # cold: no pooled connection
                run, value = bench.deploy_change()
                bench.check(run, active, value)
                result.cold = run
                result.bare_connect = bare.connect(active, min(parallelism, size))
                for _ in range(args.repeat):
                    with sampler.window(result.rss_kb):
                        run, value = bench.deploy_change()
                    rollout = bench.check(run, active, value)
                    bench.record_steps(result, rollout)
                    result.warm.append(run)
                    result.bare.append(bench.bare_push(bare))
                if size == largest:
                    memory_line = print_nodes_memory(bench, size)
                bare.disconnect()
                results.append(result)
                print(f"measured {size} node(s): cold {result.cold.seconds:.3f} s, warm "
                      f"median {median([r.seconds for r in result.warm]):.3f} s; bare push "
                      f"median {median([r.seconds for r in result.bare]):.3f} s", flush=True)
            rss_largest = results[-1].rss_kb
            api_token = tokens.create_token(admin, "bench")[1]
            responsive_line = responsiveness(bench, bench.activate(largest), api_token)

            print(f"\nend-to-end deploy of one site change (update_site + deploy_site + wait), "
                  f"DEPLOY_PARALLELISM={parallelism}, warm = median of {args.repeat}")
            print(f"{'nodes':>5} {'cold s':>8} {'warm med s':>11} {'warm min s':>11} "
                  f"{'Ansible s':>10} {'speed-up (warm)':>16} {'speed-up (cold)':>16}")
            warm_of: dict[int, float] = {}
            for result in results:
                assert result.cold is not None
                warm = [r.seconds for r in result.warm]
                warm_of[result.size] = median(warm)
                ansible = ANSIBLE.get(result.size)
                ref = f"{ansible:10.0f}" if ansible else f"{'-':>10}"
                up_w = f"{ansible / warm_of[result.size]:15.1f}x" if ansible else f"{'-':>16}"
                up_c = f"{ansible / result.cold.seconds:15.1f}x" if ansible else f"{'-':>16}"
                print(f"{result.size:>5} {result.cold.seconds:8.3f} {median(warm):11.3f} "
                      f"{min(warm):11.3f} {ref} {up_w} {up_c}")
            smallest = sizes[0]
            ratio = warm_of[goal_fleet] / warm_of[smallest]
            print(f"ratio warm({goal_fleet})/warm({smallest}): {ratio:.2f}")
            for size in sizes:
                if size > goal_fleet:
                    print(f"ratio warm({size})/warm({smallest}): "
                          f"{warm_of[size] / warm_of[smallest]:.2f}; warm({size})/warm("
                          f"{goal_fleet}): {warm_of[size] / warm_of[goal_fleet]:.2f} "
                          f"(no goal)")
            print("Ansible reference (issue): ~5 s to 1 node, ~14 s to 10, ~60 s to 50")
            print(f"goal warm {goal_fleet} nodes < {GOAL_WARM_LARGEST} s: "
                  f"{warm_of[goal_fleet]:.3f} s -> "
                  f"{verdict(warm_of[goal_fleet] < GOAL_WARM_LARGEST)}")
            print(f"goal warm({goal_fleet}) < {GOAL_RATIO:g}x warm({smallest}): {ratio:.2f}x -> "
                  f"{verdict(ratio < GOAL_RATIO)}")

            bare_ratio = print_bare(results, goal_fleet, args.repeat)

            print("\nCPU per node per deploy (warm medians / nodes; control plane = this "
                  "process, nodes = sshd sessions + nginx):")
            cpu_node_ms: dict[int, tuple[float, float]] = {}
            for result in results:
                cpu_node_ms[result.size] = (
                    1000 * median([r.cpu_self for r in result.warm]) / result.size,
                    1000 * median([r.cpu_sshd + r.cpu_nginx for r in result.warm]) / result.size)
                print(f"  {result.size:>4} nodes: control plane "
                      f"{cpu_node_ms[result.size][0]:6.1f} ms, nodes "
                      f"{cpu_node_ms[result.size][1]:6.1f} ms")
            if len(results) > 1:
                low, high = results[0], results[-1]
                marginal = 1000 * (median([r.cpu_self for r in high.warm])
                                   - median([r.cpu_self for r in low.warm])) / (
                    high.size - low.size)
                print(f"  each node beyond the first {low.size}: {marginal:.1f} ms of "
                      f"control-plane CPU ({low.size} -> {high.size} nodes; the rest is each "
                      f"rollout's fixed cost)")

            for result in results:
                print_steps(result)

            if sweep:
                active = bench.activate(largest)
                print(f"\nDEPLOY_PARALLELISM sweep, {largest} nodes, warm, "
                      f"median of {args.repeat}:")
                best: tuple[float, int] | None = None
                for workers in sweep:
                    app.config["DEPLOY_PARALLELISM"] = workers
                    times, slowest, tests = [], [], []
                    for _ in range(args.repeat):
                        with sampler.window(rss_largest):
                            run, value = bench.deploy_change()
                        rollout = bench.check(run, active, value)
                        times.append(run.seconds)
                        per = SizeResult(largest)
                        bench.record_steps(per, rollout)
                        slowest.append(max(per.node_totals))
                        tests.extend(per.steps["test"] + per.steps["reload"])
                    print(f"  DEPLOY_PARALLELISM={workers:>3}: median {median(times):.3f} s, "
                          f"min {min(times):.3f} s; slowest node median "
                          f"{median(slowest):.3f} s; test+reload step median "
                          f"{median(tests):.3f} s")
                    if best is None or median(times) < best[0]:
                        best = (median(times), workers)
                assert best is not None
                print(f"  best: DEPLOY_PARALLELISM={best[1]} ({best[0]:.3f} s; goal "
                      f"< {GOAL_WARM_LARGEST} s at {goal_fleet} nodes: "
                      f"{verdict(best[0] < GOAL_WARM_LARGEST)})")
                app.config["DEPLOY_PARALLELISM"] = parallelism

            missed = warm_of[goal_fleet] >= GOAL_WARM_LARGEST or ratio >= GOAL_RATIO
            if args.profile == "always" or (args.profile == "auto" and missed):
                profile_deploy(bench, bench.activate(goal_fleet), top=25)

            active = bench.activate(fd_nodes)
            run, value = bench.deploy_change()  # pool warm for exactly this fleet
            bench.check(run, active, value)
            pool = ssh.pool(app)
            fds_before, threads_before = open_fds(), threading.active_count()
            kinds_before, names_before = fd_kinds(), thread_names()
            stats_before = pool.stats()
            t0 = time.perf_counter()
            for index in range(args.fd_deploys):
                run, value = bench.deploy_change()
                # Status every time; HTTP through every node every 10th run and last.
                bench.check(run, active, value,
                            http=index % 10 == 9 or index == args.fd_deploys - 1)
            spent = time.perf_counter() - t0
            fds_after, threads_after = open_fds(), threading.active_count()
            kinds_after, names_after = fd_kinds(), thread_names()
            stats_after = pool.stats()
            releases = max(len(release_dirs(node)) for node in active)
            print(f"\nopen file descriptors, {args.fd_deploys} warm deploys to {fd_nodes} "
                  f"nodes ({spent:.1f} s, {spent / max(1, args.fd_deploys):.3f} s each): "
                  f"before {fds_before}, after {fds_after} -> "
                  f"{'no growth' if fds_after <= fds_before else 'GREW'}")
            print(f"threads before {threads_before}, after {threads_after}; SSH pool before "
                  f"{stats_before}, after {stats_after}; release dirs per node (max) "
                  f"{releases}")
            fd_change = {k: kinds_after[k] - kinds_before[k]
                         for k in kinds_before | kinds_after if kinds_after[k] != kinds_before[k]}
            thread_change = {k: names_after[k] - names_before[k]
                             for k in names_before | names_after
                             if names_after[k] != names_before[k]}
            print(f"descriptors by kind before {dict(kinds_before)}; change {fd_change or '{}'}; "
                  f"threads change {thread_change or '{}'}")

            print(f"\nchange visible when wait() returned: {len(bench.stale_runs)} of "
                  f"{len(bench.checked_runs)} rollouts checked over HTTP had a node still "
                  f"serving the previous value ({len(bench.stale_delays)} of {bench.checks} "
                  f"node checks, {bench.stale_answers} stale answers); the slowest caught up "
                  f"{max(bench.stale_delays, default=0) * 1000:.0f} ms after wait() returned")

        peak_rusage_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak_largest_mb = max(rss_largest) / 1024 if rss_largest else float("nan")
        rss_goal = rss_goal_mb(largest)
        print(f"\npeak resident memory of the control plane: ru_maxrss {peak_rusage_mb:.0f} MB "
              f"(whole bench); VmRSS sampled every 10 ms during the {largest}-node deploys: "
              f"{peak_largest_mb:.0f} MB; goal < {rss_goal} MB -> "
              f"{verdict(peak_rusage_mb < rss_goal)}")
        load_end = load_average()

        print("\nsummary (one figure per line; warm = median, seconds; CPU seconds per warm "
              "deploy, control plane = this process, nodes = sshd sessions + nginx; every "
              "figure with its goal, or 'no goal'):")
        print(f"load average at start: {load_start}; at end: {load_end} "
              f"({os.cpu_count()} CPU cores shared with other work)")
        print(f"fleet: {largest} nginx nodes behind 1 sshd; {memory_line}")
        for result in results:
            assert result.cold is not None
            print(f"cold {result.size} nodes: {result.cold.seconds:.3f} s (no goal)")
            goal = (f"goal < {GOAL_WARM_LARGEST} s -> "
                    f"{verdict(warm_of[result.size] < GOAL_WARM_LARGEST)}"
                    if result.size == goal_fleet else "no goal")
            print(f"warm {result.size} nodes: {warm_of[result.size]:.3f} s "
                  f"(best {min(r.seconds for r in result.warm):.3f} s); {goal}")
        print(f"ratio warm {goal_fleet} / warm {smallest}: {ratio:.2f}; goal < {GOAL_RATIO:g} "
              f"-> {verdict(ratio < GOAL_RATIO)}")
        for result in results:
            app_s = median([r.seconds for r in result.warm])
            bare_s = median([r.seconds for r in result.bare])
            goal = (f"goal <= {GOAL_BARE_RATIO:g}x -> {verdict(bare_ratio <= GOAL_BARE_RATIO)}"
                    if result.size == goal_fleet else "no goal")
            print(f"app vs bare push, {result.size} nodes warm: app {app_s:.3f} s, bare "
                  f"{bare_s:.3f} s, ratio {app_s / bare_s:.2f}x; {goal}")
        print("bare push: SFTP put of the site's server block (own name and value) to a file "
              "nginx.conf includes beside the managed directory, test && reload in one "
              "channel, HTTP GET until the new value; warm connections, same threads")
        for result in results:
            print(f"control-plane CPU per deploy, {result.size} nodes: "
                  f"{median([r.cpu_self for r in result.warm]):.3f} s (no goal)")
            print(f"nodes' CPU per deploy, {result.size} nodes: "
                  f"{median([r.cpu_sshd + r.cpu_nginx for r in result.warm]):.3f} s (no goal)")
        for result in results:
            cp_ms, nodes_ms = cpu_node_ms[result.size]
            goal = (f"goal < {GOAL_CPU_PER_NODE_MS:g} ms -> "
                    f"{verdict(cp_ms < GOAL_CPU_PER_NODE_MS)}" if result.size >= goal_fleet
                    else f"not judged below {goal_fleet} nodes: the rollout's fixed cost "
                         f"dominates")
            print(f"CPU per node per deploy, {result.size} nodes: control plane {cp_ms:.1f} "
                  f"ms ({goal}); nodes {nodes_ms:.1f} ms (no goal)")
        for result in results:
            peak = max(result.rss_kb) / 1024 if result.rss_kb else float("nan")
            print(f"peak RSS during the {result.size}-node deploys: {peak:.0f} MB; goal "
                  f"< {rss_goal_mb(result.size)} MB -> "
                  f"{verdict(peak < rss_goal_mb(result.size))}")
        print(f"peak RSS of the whole bench (ru_maxrss): {peak_rusage_mb:.0f} MB; goal "
              f"< {rss_goal} MB -> {verdict(peak_rusage_mb < rss_goal)}")
        print(f"open fds before {args.fd_deploys} deploys to {fd_nodes} nodes: {fds_before}")
        print(f"open fds after {args.fd_deploys} deploys to {fd_nodes} nodes: {fds_after}; "
              f"goal no growth -> {verdict(fds_after <= fds_before)}")
        print(f"rollouts with a node serving the previous value when wait() returned: "
              f"{len(bench.stale_runs)} of {len(bench.checked_runs)} (no goal)")
        print(responsive_line + " (no goal)")
    finally:
        sampler.stop()
        ssh.reset(app)
        if bare is not None:
            bare.stop()
        if backend is not None:
            backend.terminate()
            try:
                backend.wait(timeout=10)
            except subprocess.TimeoutExpired:
                backend.kill()
                backend.wait()
        for nginx in started:
            try:
                nginx.stop()
            finally:
                nginx.remove()
        if sshd is not None:
            sshd.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
