"""Two app instances behind a load balancer, as a deployment scales out: two real
gunicorn processes on one real PostgreSQL database (its own, created and dropped
here, as PostgreSQL-only as scheduler leadership itself) and one real memcached,
behind a real nginx on loopback passing requests to each in turn.  What one
instance knows, the other must know too: sessions, sign-in failures, node leases,
the progress of a rollout, and which of them runs the scheduled jobs."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from tests.components import AppServer, app_env, flask_cli, postgres_database
from tests.fleet import Backends, FleetNode, start_nginx
from tests.instances import LoadBalancer
from tests.nginx_node import NginxNode, fetch
from tests.sshd import SshServer

PASSWORD = "a-long-enough-password"
FIRST, SECOND, BALANCER, NODE = "127.0.0.111", "127.0.0.112", "127.0.0.113", "127.0.0.114"
FAILURES = 3  # SIGN_IN_USER_ADDRESS_FAILURES: a username is locked from one address
LEASE_TTL = 10.0  # SCHEDULER_LEASE_TTL
TIMEOUT = 120.0  # a generous functional bound, not a performance figure


@dataclass
class Deployment:
    database: Engine
    first: AppServer
    second: AppServer
    balancer: LoadBalancer

    @property
    def instances(self) -> list[AppServer]:
        return [self.first, self.second]


def create_user(env: dict[str, str], username: str, role: str = "client") -> None:
    flask_cli(env, "users", "create", "--username", username, "--email",
              f"{username}@example.com", "--role", role, "--password-stdin",
              stdin=PASSWORD + "\n")


@pytest.fixture(scope="module")
def deployment(memcached: str) -> Iterator[Deployment]:
    with postgres_database("rpcc_two") as url, ExitStack() as teardown:
        env = app_env(url, RATELIMIT_STORAGE_URI=memcached,
                      RATELIMIT_KEY_PREFIX=f"two-{uuid.uuid4().hex[:8]}",
                      SIGN_IN_USER_ADDRESS_FAILURES=str(FAILURES),
                      SIGN_IN_USER_FAILURES="100", SIGN_IN_ADDRESS_FAILURES="100",
                      SCHEDULER_HEARTBEAT="0.5", SCHEDULER_LEASE_TTL=str(LEASE_TTL),
                      # The jobs stay off the node whose lease the tests hold.
                      JOB_INTERVAL_NODE_HEALTH="0", JOB_INTERVAL_DRIFT="0",
                      JOB_INTERVAL_NODE_METRICS="0", SSH_RETRIES="0",
                      PROGRESS_STREAM_HEARTBEAT="1", PROXY_FIX_COUNT="1")
        create_user(env, "chief", "admin")
        for username in ("alice", "victim"):
            create_user(env, username)
        engine = create_engine(url, poolclass=NullPool)
        teardown.callback(engine.dispose)
        first = AppServer(env, host=FIRST, threads=8)
        teardown.callback(first.stop)
        second = AppServer(env, host=SECOND, threads=8)
        teardown.callback(second.stop)
        balancer = LoadBalancer([(FIRST, first.port), (SECOND, second.port)], BALANCER)
        teardown.callback(balancer.stop)
        yield Deployment(engine, first, second, balancer)


def wait_for(condition: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)
    return result


def sign_in(base: str, username: str) -> requests.Session:
    """What a browser does: the form (session cookie and CSRF token), then the post."""
    browser = requests.Session()
    page = browser.get(f"{base}/auth/login", timeout=30)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page.text)
    assert token, page.text
    answer = browser.post(f"{base}/auth/login", timeout=30, allow_redirects=False, data={
        "username": username, "password": PASSWORD, "csrf_token": token.group(1)})
    assert answer.status_code == 302, answer.text
    return browser


def cookies(browser: requests.Session) -> dict[str, str]:
    """The browser's cookies as a header, for a request straight to one instance
    (a cookie jar keeps them for the balancer's address only)."""
    return {"Cookie": "; ".join(f"{c.name}={c.value}" for c in browser.cookies)}


def api_token(base: str, username: str) -> dict[str, str]:
    answer = requests.post(f"{base}/api/v1/tokens", timeout=30, json={
        "username": username, "password": PASSWORD, "name": "two-instances"})
    assert answer.status_code == 201, answer.text
    return {"Authorization": f"Bearer {answer.json()['token']}"}


def served_by(deployment: Deployment, count: int) -> set[str]:
    """The instances the balancer sent ``count`` requests to, from their access logs."""
    marks = {f"probe-{uuid.uuid4().hex[:8]}" for _ in range(count)}
    for mark in sorted(marks):
        assert requests.get(f"{deployment.balancer.url}/health", timeout=30,
                            headers={"X-Request-ID": mark}).status_code == 200

    def where() -> dict[str, str]:
        logs = {s.host: (s.root / "gunicorn.log").read_text() for s in deployment.instances}
        return {mark: host for mark in marks for host, log in logs.items() if mark in log}

    found = wait_for(lambda: (seen := where()).keys() == marks and seen)
    return set(found.values())


def test_the_balancer_spreads_requests_over_both_instances(deployment):
    assert served_by(deployment, 4) == {FIRST, SECOND}


def test_a_session_signed_in_through_the_balancer_is_valid_on_each_instance(deployment):
    # The form and its post go to different instances (round robin): the CSRF token
    # one instance put in the session is checked by the other.
    browser = sign_in(deployment.balancer.url, "alice")
    for server in deployment.instances:
        page = requests.get(f"{server.url}/client/", headers=cookies(browser), timeout=30,
                            allow_redirects=False)
        assert page.status_code == 200, (server.host, page.status_code)
        assert "alice" in page.text
    # Without the cookie, either instance sends the visitor to sign in.
    anonymous = requests.get(f"{deployment.second.url}/client/", timeout=30,
                             allow_redirects=False)
    assert anonymous.status_code == 302
    assert "/auth/login" in anonymous.headers["Location"]


def test_failed_sign_ins_on_both_instances_are_counted_together(deployment):
    def attempt(server: AppServer, password: str) -> requests.Response:
        return requests.post(f"{server.url}/api/v1/tokens", timeout=30, json={
            "username": "victim", "password": password, "name": "guess"})

    servers = [deployment.first, deployment.second, deployment.first]
    assert [attempt(s, f"guess-{n}").status_code for n, s in enumerate(servers)] == [401] * 3
    # Neither instance saw three failures alone; together they lock the username for
    # this address, on both, even with the right password.
    for server in deployment.instances:
        locked = attempt(server, PASSWORD)
        assert locked.status_code == 429, locked.text
        assert int(locked.headers["Retry-After"]) > 0


@pytest.fixture()
def node() -> Iterator[NginxNode]:
    nginx = start_nginx(NODE)
    try:
        yield nginx
    finally:
        nginx.stop()
        nginx.remove()


def read_events(stream: requests.Response) -> Iterator[dict[str, Any]]:
    for line in stream.iter_lines(decode_unicode=True):
        if line and line.startswith("data: "):
            yield json.loads(line[len("data: "):])


def test_a_node_lease_held_elsewhere_holds_a_rollout_whose_progress_streams_through_either(
        deployment, node: NginxNode, sshd: SshServer, backends: Backends):
    admin = api_token(deployment.balancer.url, "chief")
    spec = node.spec
    created = requests.post(f"{deployment.balancer.url}/api/v1/nodes", headers=admin,
                            timeout=30, json={
        "name": "edge-shared", "host": "127.0.0.1", "ssh_port": sshd.port, "ssh_user": "root",
        "ssh_private_key": sshd.client_key_text, "proxy_type": "nginx", "pool": "default",
        "config_dir": spec.config_dir, "test_command": spec.test_command,
        "reload_command": spec.reload_command, "listen_address": spec.listen_address,
        "http_port": spec.http_port, "https_port": spec.https_port,
        "log_dir": spec.log_dir, "cache_dir": spec.cache_dir,
        "geoip_db_path": spec.geoip_db_path, "status_port": spec.status_port})
    assert created.status_code == 201, created.text
    node_id = created.json()["id"]
    untouched = FleetNode(node, node_id, "edge-shared").snapshot()
    backend = backends.start("shared")
    alice = api_token(deployment.balancer.url, "alice")
    site = requests.post(f"{deployment.balancer.url}/api/v1/sites", headers=alice, timeout=30,
                         json={"domain": "shared.example.com",
                               "backends": [{"host": "127.0.0.1", "port": backend.port}]})
    assert site.status_code == 201, site.text

    # Another holder (a rollout of some other process) has the node.
    with deployment.database.begin() as conn:
        now = datetime.now(UTC)
        conn.execute(text(
            "INSERT INTO node_locks (node_id, holder, acquired_at, expires_at) "
            "VALUES (:node, 'elsewhere', :now, :until)"),
            {"node": node_id, "now": now, "until": now + timedelta(seconds=600)})

    started = requests.post(f"{deployment.second.url}/api/v1/sites/{site.json()['id']}/deploy",
                            headers=alice, timeout=30)
    assert started.status_code == 202, started.text
    rollout_id = started.json()["id"]

    def state() -> dict[str, Any]:
        answer = requests.get(f"{deployment.first.url}/api/v1/deployments/{rollout_id}",
                              headers=alice, timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()

    waiting = wait_for(lambda: (s := state())["nodes"] and s["nodes"][0]["step"] == "lock" and s)
    assert waiting["status"] == "running" and waiting["nodes"][0]["status"] == "running"

    # The progress, from the instance that did not start the rollout and through the
    # balancer (whichever instance it picks), for a browser signed in once.
    browser = sign_in(deployment.balancer.url, "alice")
    path = f"/client/deployments/{rollout_id}/events"
    streams = [requests.get(f"{base}{path}", stream=True, timeout=60,
                            headers={"Accept": "text/event-stream", **cookies(browser)})
               for base in (deployment.first.url, deployment.balancer.url)]
    try:
        events = [read_events(stream) for stream in streams]
        for stream, events_of in zip(streams, events, strict=True):
            assert stream.status_code == 200
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            first = next(events_of)
            assert first["nodes"][0]["step"] == "lock" and not first["finished"]
        # Still waiting: the node was not touched while the lease was held elsewhere.
        assert state()["nodes"][0]["step"] == "lock"
        assert FleetNode(node, node_id, "edge-shared").snapshot() == untouched

        with deployment.database.begin() as conn:
            conn.execute(text("DELETE FROM node_locks WHERE holder = 'elsewhere'"))

        def last(events_of: Iterator[dict[str, Any]]) -> dict[str, Any]:
            seen = [event for event in events_of]
            assert seen and all(not e["finished"] for e in seen[:-1])
            return seen[-1]

        with ThreadPoolExecutor(max_workers=2) as pool:
            finals = list(pool.map(last, events))
    finally:
        for stream in streams:
            stream.close()
    for final in finals:
        assert final["finished"] and final["status"] == "succeeded", final
        assert final["nodes"][0]["status"] == "succeeded"
    served = fetch(node, "shared.example.com")
    assert served.status == 200 and json.loads(served.body)["backend"] == "shared"


def admin_health(server: AppServer, admin: dict[str, str]) -> dict[str, Any]:
    answer = requests.get(f"{server.url}/health", headers=admin, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("PPid:"))


def test_one_instance_leads_the_scheduler_and_the_other_takes_over_when_it_stops(deployment):
    """Runs last: it stops an instance."""
    admin = api_token(deployment.balancer.url, "chief")
    leader = wait_for(lambda: admin_health(deployment.first, admin)["scheduler"]["leader"])
    for server in deployment.instances:  # both tell the same one leader
        report = admin_health(server, admin)
        assert report["status"] == "ok" and report["scheduler"]["leader"] == leader
    with deployment.database.connect() as conn:
        holders = conn.execute(text("SELECT holder FROM scheduler_leases")).scalars().all()
    assert holders == [leader]

    master = parent_pid(int(leader.split(":")[1]))
    (leading,) = [s for s in deployment.instances if s.process.pid == master]
    (other,) = [s for s in deployment.instances if s is not leading]
    stopped = time.monotonic()
    leading.stop()  # SIGTERM to its master: the worker gives the lease back
    assert leading.process.returncode == 0

    def successor() -> str | None:
        now = admin_health(other, admin)["scheduler"]["leader"]
        return now if now not in (None, leader) else None

    taken = wait_for(successor, timeout=LEASE_TTL)
    failover = time.monotonic() - stopped
    print(f"scheduler failover after SIGTERM to the leader: {failover:.2f}s")
    assert parent_pid(int(taken.split(":")[1])) == other.process.pid
    assert admin_health(other, admin)["status"] == "ok"
    # Through the balancer, the survivor answers alone.
    assert requests.get(f"{deployment.balancer.url}/health", timeout=30).json() == {
        "status": "ok", "degraded": []}
