"""A node may reload nginx by signalling its master through the pid file
(``pkill -HUP -F PATH -x nginx``) instead of ``nginx -s reload``, which parses the
whole configuration once more: the deployment goes live the same way, and a pid file
that names no nginx process fails the reload with a sentence the administrator can
act on, the previous configuration still serving.  Real sshd, real nginx."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest

from app.models import DeploymentStatus, NodeDeployment, Rollout
from app.services import deployments, explain, nodes, sites
from tests import factories
from tests.fleet import FleetNode

ADDRESSES = ("127.0.0.47",)


def deploy(actor: Any, site_id: int) -> Rollout:
    return deployments.wait(deployments.deploy_site(actor, site_id).id, timeout=120)


def use_reload(admin: Any, node: FleetNode, pid_file: str) -> None:
    nodes.update_node(admin, node.id, {"reload_command": f"pkill -HUP -F {pid_file} -x nginx"})


@pytest.fixture()
def live(admin, alice, fleet, backends) -> tuple[FleetNode, int]:
    """The node reloading by signal, serving one site of alice's."""
    [node] = fleet
    use_reload(admin, node, str(node.nginx.pid_file))
    backend = backends.start("app")
    site = factories.make_site(alice, "signal.example.com", headers={"X-Version": "1"},
                               backends=[{"host": "127.0.0.1", "port": backend.port}])
    first = deploy(alice, site.id)
    assert first.status == DeploymentStatus.SUCCEEDED, first.error
    assert node.get("signal.example.com").headers.get("x-version") == "1"
    return node, site.id


def test_a_change_goes_live_through_the_masters_signal(alice, live):
    node, site_id = live
    master = node.nginx.master_pid()
    sites.update_site(alice, site_id, {"headers": {"X-Version": "2"}})
    rollout = deploy(alice, site_id)
    assert rollout.status == DeploymentStatus.SUCCEEDED, rollout.error
    # Verification waited for the new workers: the change is what the node serves.
    assert node.get("signal.example.com").headers.get("x-version") == "2"
    assert node.nginx.master_pid() == master  # reloaded, not restarted


def test_a_pid_file_naming_no_nginx_fails_the_reload_and_keeps_the_previous_config(
        admin, alice, live, tmp_path):
    node, site_id = live
    before = node.snapshot()
    # The pid file of some other program: pkill sends nothing, and says so by its status.
    other = subprocess.Popen(["sleep", "300"])
    try:
        stale = tmp_path / "other.pid"
        stale.write_text(f"{other.pid}\n")
        os.chmod(tmp_path, 0o755)
        stale.chmod(0o644)
        use_reload(admin, node, str(stale))
        sites.update_site(alice, site_id, {"headers": {"X-Version": "3"}})
        rollout = deploy(alice, site_id)
        assert other.poll() is None  # the other program got no signal
    finally:
        other.kill()
        other.wait()
    assert rollout.status == DeploymentStatus.FAILED
    [deployment] = rollout.deployments
    assert isinstance(deployment, NodeDeployment)
    assert deployment.error.startswith("reload: reload failed (pkill -HUP -F ")
    told = explain.node_failure(deployment.error, node.name, admin=True)
    assert "found no nginx process with the PID its pid file names" in told.summary
    assert node.name in told.summary
    for_owner = explain.node_failure(deployment.error, node.name, admin=False)
    assert node.name not in for_owner.summary and str(stale) not in for_owner.summary
    assert "previous one was put back" in for_owner.summary
    assert node.snapshot() == before
    assert node.get("signal.example.com").headers.get("x-version") == "1"
