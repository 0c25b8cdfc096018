"""The registered jobs, run by the scheduler against real nodes: nginx reached over a
real sshd on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from sqlalchemy import select

from app.extensions import ssh
from app.models import DeploymentStatus, JobRun, Node, NodeStatus
from app.scheduler import JOBS, Scheduler
from app.services import deployments
from tests import factories
from tests.fleet import FleetNode, register, start_nginx


@pytest.fixture()
def nodes(app, admin, sshd) -> Iterator[list[FleetNode]]:
    """Two nginx nodes, both stopped at the end even if stopping one fails."""
    started = []
    with ExitStack() as teardown:
        teardown.callback(ssh.reset, app)
        for index in range(2):
            nginx = start_nginx(f"127.0.0.{40 + index}")
            teardown.callback(nginx.remove)
            teardown.callback(nginx.stop)
            started.append(nginx)
        yield [register(admin, nginx, f"edge-{i}", sshd.port, sshd.client_key_text)
               for i, nginx in enumerate(started)]


def latest(db, job: str) -> JobRun:
    db.session.rollback()
    return db.session.scalars(select(JobRun).where(JobRun.job == job)
                              .order_by(JobRun.id.desc())).first()


def test_registered_jobs_check_health_and_drift_of_real_nodes(app, db, admin, alice, nodes,
                                                              backends, monkeypatch):
    backend = backends.start("shop")
    site = factories.make_site(alice, "shop.example.com",
                               backends=[{"host": "127.0.0.1", "port": backend.port}])
    rollout = deployments.wait(deployments.deploy_site(alice, site.id).id, timeout=120)
    assert rollout.status == DeploymentStatus.SUCCEEDED
    conf = nodes[0].nginx.config_dir / "sites" / "shop.example.com.conf"
    conf.write_text(conf.read_text() + "\n# edited by hand\n")
    nodes[1].nginx.stop()

    monkeypatch.setitem(app.config, "SCHEDULER_HEARTBEAT", 0.5)
    monkeypatch.setitem(app.config, "SCHEDULER_LEASE_TTL", 5.0)
    scheduler = Scheduler(app, JOBS, runner="leader")
    try:
        scheduler.step()  # nothing has run yet: every job is due
    finally:
        scheduler.stop()

    health = latest(db, "node_health")
    assert health.status.value == "succeeded", health.detail
    assert health.detail == "2 node(s) checked: 1 healthy, 1 not"
    drift = latest(db, "drift")
    assert drift.status.value == "succeeded", drift.detail
    assert drift.detail == "2 deployed node(s) compared: 1 drifted (edge-0)"
    assert latest(db, "job_retention").status.value == "succeeded"

    edited, stopped = (db.session.get(Node, node.id) for node in nodes)
    assert edited.status == NodeStatus.ONLINE and edited.drifted
    assert "changed sites/shop.example.com.conf" in edited.drift_details
    assert stopped.status == NodeStatus.OFFLINE and not stopped.last_check["http"]["ok"]
    assert not stopped.drifted  # its files are as deployed; only nginx is down
