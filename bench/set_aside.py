"""What a neighbour's bad site costs another tenant's deployment: a one-site change
deployed to real nginx nodes over one real sshd on loopback, in a pool of many sites,
measured in the same run

- as the baseline: nobody's site is broken;
- right after a neighbour saved a site the nodes refuse (a backend name nginx cannot
  resolve): the deployment tests, finds the site in what nginx printed, sets it aside
  and deploys again;
- while that version stays refused: later rollouts set it aside from the start;
- when the refusal names no file and the deployment bisects over changed sites
  (several neighbours changed at once, one of them broken).

Every run is checked: the rollout succeeded on every node and every node answers
with the new header.  Prints the median of ``--repeat`` runs of each case, and each
case's ratio to the baseline.

    .venv/bin/python bench/set_aside.py [--nodes 3] [--sites 500] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flask_migrate import upgrade  # noqa: E402

from app import create_app  # noqa: E402
from app.extensions import ssh
from app.models import DeploymentStatus, Site, User  # noqa: E402
from app.services import deployments, set_aside, sites  # noqa: E402
from tests import factories  # noqa: E402
from tests.fleet import FleetNode, register, start_nginx  # noqa: E402
from tests.nginx_node import Backend, NginxNode  # noqa: E402
from tests.sshd import SshServer  # noqa: E402

HEADER = "X-Bench"


def node_address(index: int) -> str:
    """127.0.2.1, 127.0.2.2, ... (clear of the tests' and the fan-out bench's nodes)."""
    return f"127.0.2.{1 + index}"


class Case:
    def __init__(self, client: User, fleet: list[FleetNode], site: Site) -> None:
        self.client = client
        self.fleet = fleet
        self.site_id = site.id
        self.counter = 0
        self.steps: dict[str, list[float]] = {}

    def change(self) -> float:
        """One header change of the measured site, deployed and checked; seconds."""
        self.counter += 1
        value = f"v{self.counter}"
        started = time.perf_counter()
        sites.update_site(self.client, self.site_id, {"headers": {HEADER: value}})
        rollout = deployments.wait(deployments.deploy_site(self.client, self.site_id).id,
                                   timeout=600)
        seconds = time.perf_counter() - started
        if rollout.status != DeploymentStatus.SUCCEEDED:
            raise SystemExit(f"rollout {rollout.id} {rollout.status.value}: {rollout.error}")
        for deployment in rollout.deployments:
            for step in deployment.steps:
                self.steps.setdefault(step["step"], []).append(step["seconds"])
        domain = sites.get_site(self.client, self.site_id).domain
        for node in self.fleet:
            deadline = time.monotonic() + 10
            while node.get(domain).headers.get(HEADER.lower()) != value:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{node.name} does not serve {value}")
                time.sleep(0.02)
        return seconds


def measure(label: str, repeat: int, prepare: Callable[[], None], run: Callable[[], float],
            baseline: float | None) -> float:
    samples = []
    run_steps = getattr(run, "__self__", None)
    if isinstance(run_steps, Case):
        run_steps.steps = {}
    for _ in range(repeat):
        prepare()
        samples.append(run())
    median = statistics.median(samples)
    ratio = f"  ({median / baseline:.2f}x the baseline)" if baseline else ""
    print(f"{label:<62} median {median:6.3f} s  (min {min(samples):.3f}, "
          f"max {max(samples):.3f}){ratio}", flush=True)
    if isinstance(run_steps, Case):
        print("    per node, summed over the steps of each kind (median): " + ", ".join(
            f"{name} {statistics.median(values) * len(values) / repeat / len(run_steps.fleet):.3f}"
            for name, values in run_steps.steps.items()), flush=True)
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--sites", type=int, default=500, help="sites in the pool")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="rpcc-bench-set-aside-")
    app = create_app("testing", {
        "SQLALCHEMY_DATABASE_URI": "sqlite:///" + os.path.join(workdir, "bench.db"),
        "RATELIMIT_ENABLED": False, "WTF_CSRF_ENABLED": False})
    sshd: SshServer | None = None
    started: list[NginxNode] = []
    backend: Backend | None = None
    try:
        with app.app_context():
            upgrade()
            admin = factories.make_user("admin", "benchadmin")
            owner = factories.make_user("client", "owner", max_sites=args.sites + 10)
            neighbour = factories.make_user("client", "neighbour", max_sites=args.sites + 10)
            sshd = SshServer()
            started = [start_nginx(node_address(i)) for i in range(args.nodes)]
            fleet = [register(admin, nginx, f"edge-{i}", sshd.port, sshd.client_key_text)
                     for i, nginx in enumerate(started)]
            backend = Backend("bench")
            port = backend.port
            for index in range(args.sites - 1):
                factories.make_site(neighbour, f"n{index}.neighbour.example",
                                    backends=[{"host": "127.0.0.1", "port": port}])
            site = factories.make_site(owner, "shop.example.com",
                                       backends=[{"host": "127.0.0.1", "port": port}],
                                       headers={HEADER: "v0"})
            case = Case(owner, fleet, site)
            first = case.change()
            load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
            print(f"{args.nodes} nginx nodes, one pool of {args.sites} sites; first deploy "
                  f"{first:.2f} s; load average {load}; {os.cpu_count()} cores shared with "
                  f"sshd and nginx", flush=True)

            baseline = measure("baseline: a one-site change", args.repeat, lambda: None,
                               case.change, None)
            broken: list[int] = []

            def break_one() -> None:
                victim = factories.make_site(
                    neighbour, f"broken{len(broken)}.neighbour.example",
                    backends=[{"host": f"gone{len(broken)}.invalid", "port": 80}])
                broken.append(victim.id)

            measure("a neighbour just saved a site the nodes refuse", args.repeat, break_one,
                    case.change, baseline)
            measure("that version stays refused (set aside from the start)", args.repeat,
                    lambda: None, case.change, baseline)

            # No file named: a complaint the proxy prints without a location.
            real_blame = set_aside.blamed_sites
            set_aside.blamed_sites = lambda *a, **k: set()  # type: ignore[assignment]
            try:
                neighbours = [s.id for s in sites.list_sites(neighbour, per_page=50).items
                              if s.domain.startswith("n")]

                def four_changes_one_broken() -> None:
                    for site_id in neighbours[:3]:
                        sites.update_site(neighbour, site_id, {"headers": {"X-N": str(
                            time.monotonic_ns())}})
                    break_one()

                measure("4 neighbours changed, one refused, no file named (bisection)",
                        args.repeat, four_changes_one_broken, case.change, baseline)
            finally:
                set_aside.blamed_sites = real_blame  # type: ignore[assignment]
            ssh.reset(app)
    finally:
        for nginx in started:
            nginx.stop()
            nginx.remove()
        if backend is not None:
            backend.stop()
        if sshd is not None:
            sshd.stop()


if __name__ == "__main__":
    main()
