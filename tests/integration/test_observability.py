"""/metrics and request ids with real parts: a rollout to real nginx nodes over real
SSH is counted with its outcome and logs under the id of the request that started
it (in the rollout's thread and in each node's); and a real gunicorn with two
workers adds up what each worker counted, keeps the counts of a worker that exited,
and starts each instance from zero."""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from app.extensions import db
from app.models import AuditLog, DeploymentStatus, Rollout
from app.services import deployments
from tests import factories
from tests.components import AppServer, app_env, flask_cli
from tests.conftest import api_headers
from tests.logs import json_log, log_lines

# Two nodes: each deploys in a thread of the rollout's own pool.
ADDRESSES = ("127.0.0.81", "127.0.0.82")
SERVER_ADDRESS = "127.0.0.83"
GENERATED_ID = re.compile(r"[0-9a-f]{32}")


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def rollouts(text: str, outcome: str) -> float:
    return samples(text).get(("rpcc_rollouts_total", frozenset(
        {"kind": "deploy", "outcome": outcome}.items())), 0.0)


def test_a_rollout_to_real_nodes_is_counted_and_logs_under_its_request_id(
        app, alice, fleet, backends):
    backend = backends.start("counted")
    site = factories.make_site(alice, "counted.example.com",
                               backends=[{"host": "127.0.0.1", "port": backend.port}])
    http = app.test_client()
    before = http.get("/metrics").get_data(as_text=True)

    with json_log() as log:
        started = http.post(f"/api/v1/sites/{site.id}/deploy", headers={
            **api_headers(alice), "X-Request-ID": "ci-deploy-42"})
        assert started.status_code == 202
        rollout = deployments.wait(started.get_json()["id"], timeout=120)
    assert rollout.status == DeploymentStatus.SUCCEEDED, rollout.error
    assert all(node.get("counted.example.com").status == 200 for node in fleet)

    after = http.get("/metrics").get_data(as_text=True)
    assert rollouts(after, "succeeded") - rollouts(before, "succeeded") == 1
    assert rollouts(after, "failed") == rollouts(before, "failed")
    duration = samples(after)[("rpcc_rollout_duration_seconds_count", frozenset(
        {"kind": "deploy", "outcome": "succeeded"}.items()))]
    assert duration >= 1

    assert db.session.get(Rollout, rollout.id).request_id == "ci-deploy-42"
    audited = db.session.scalars(select(AuditLog).where(AuditLog.action == "site.deploy"))
    assert [entry.request_id for entry in audited] == ["ci-deploy-42"]
    lines = log_lines(log)
    # The nodes' threads (each connects over SSH) and the rollout's own conclusion.
    connected = [line for line in lines if line["logger"] == "app.connector.pool"
                 and "connected" in line["message"]]
    assert len(connected) == len(fleet)
    assert any(line["message"].startswith(f"rollout {rollout.id} (deploy) succeeded after")
               for line in lines)
    assert {line.get("request_id") for line in lines} == {"ci-deploy-42"}


# ----------------------------------------------------------- gunicorn, two workers


@pytest.fixture()
def product(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment for gunicorn on a migrated SQLite database, with the workers'
    counts in a directory of the test's (so that a second instance can reuse it)."""
    env = app_env(f"sqlite:///{tmp_path / 'app.db'}", SCHEDULER_ENABLED="false",
                  PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"))
    flask_cli(env, "db", "upgrade")
    yield env


def get(server: AppServer, path: str, request_id: str | None = None) -> tuple[int, str, str]:
    headers = {"X-Request-ID": request_id} if request_id is not None else {}
    request = urllib.request.Request(f"{server.url}{path}", headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.headers["X-Request-ID"], response.read().decode()


def health_count(server: AppServer) -> float:
    _, _, text = get(server, "/metrics")
    return samples(text).get(("rpcc_http_request_duration_seconds_count", frozenset(
        {"endpoint": "main.health", "method": "GET", "status_class": "2xx"}.items())), 0.0)


def serving_workers(server: AppServer, ids: set[str], timeout: float = 30.0) -> dict[str, int]:
    """{request id: pid of the worker that served it} from gunicorn's access log,
    which gets each line once the answer has gone: read until all are there."""
    deadline = time.monotonic() + timeout
    while True:
        served = {}
        for line in (server.root / "gunicorn.log").read_text().splitlines():
            match = re.search(r"<(\d+)> (\S+)$", line)
            if match and match[2] in ids:
                served[match[2]] = int(match[1])
        if served.keys() == ids:
            return served
        assert time.monotonic() < deadline, f"not in the access log: {ids - served.keys()}"
        time.sleep(0.05)


def send_health_requests(server: AppServer, first: int, count: int) -> set[str]:
    """``count`` requests at once (each on its own connection), each with its id."""
    ids = {f"probe-{n}" for n in range(first, first + count)}
    with ThreadPoolExecutor(max_workers=count) as pool:
        answers = list(pool.map(lambda rid: get(server, "/health", rid), sorted(ids)))
    assert {echoed for _, echoed, _ in answers} == ids
    return ids


def wait_until_gone(pid: int, timeout: float = 30.0) -> None:
    """Until gunicorn has reaped its worker ``pid``."""
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):
        assert time.monotonic() < deadline, f"worker {pid} still there after {timeout}s"
        time.sleep(0.05)


def test_two_workers_add_up_keep_an_exited_workers_counts_and_restart_from_zero(product):
    server = AppServer(product, host=SERVER_ADDRESS, workers=2, threads=2)
    try:
        sent = send_health_requests(server, 0, 8)
        served = serving_workers(server, sent)
        if len(set(served.values())) == 1:
            # One worker took them all (the kernel picks who accepts): while it is
            # stopped, the other one must take the next ones.
            (busy,) = set(served.values())
            os.kill(busy, signal.SIGSTOP)
            try:
                sent |= send_health_requests(server, len(sent), 8)
            finally:
                os.kill(busy, signal.SIGCONT)
            served = serving_workers(server, sent)
        assert len(set(served.values())) == 2
        assert health_count(server) == len(sent)
        # A worker starting now has created its file and not yet given it a header.
        (Path(product["PROMETHEUS_MULTIPROC_DIR"]) / "counter_999999.db").touch()
        assert health_count(server) == len(sent)
        shares = sorted(Counter(served.values()).values())
        print(f"\n/metrics: {len(sent)} requests counted once over two workers serving "
              f"{shares} of them (by the access log)")

        # A worker that exits: gunicorn starts another, its counts stay in the totals.
        exiting = next(iter(served.values()))
        os.kill(exiting, signal.SIGTERM)
        wait_until_gone(exiting)
        sent |= send_health_requests(server, len(sent), 8)
        assert health_count(server) == len(sent)

        # A malformed id is replaced over real HTTP too.
        status, echoed, _ = get(server, "/health", '"quoted" id')
        assert status == 200 and GENERATED_ID.fullmatch(echoed)
    finally:
        server.stop()

    assert list(Path(product["PROMETHEUS_MULTIPROC_DIR"]).glob("*.db"))
    restarted = AppServer(product, host=SERVER_ADDRESS, workers=2, threads=2)
    try:
        assert health_count(restarted) == 0
        send_health_requests(restarted, 0, 3)
        assert health_count(restarted) == 3
    finally:
        restarted.stop()
