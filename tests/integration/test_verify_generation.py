"""A deployment is reported live only when no worker of the previous configuration
accepts any more: verification waits on a connection the old workers hold, which the
master closes once the new workers run, however long the new configuration takes to
parse.  Real sshd, real nginx, a pool big enough that the master's parse takes a
while.  Checked from outside: right after the rollout says it succeeded, fresh
connections to every node meet the new configuration, each time."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from app.models import DeploymentStatus, Rollout
from app.services import deployments, nodes, sites
from tests import factories
from tests.fleet import FleetNode

ADDRESSES = ("127.0.0.48", "127.0.0.49")
# Enough sites that each reload parses for a noticeable time.
POOL_SITES = 300
FRESH_REQUESTS = 20


def deploy(actor: Any, site_id: int) -> Rollout:
    return deployments.wait(deployments.deploy_site(actor, site_id).id, timeout=180)


@pytest.fixture()
def pool(admin, alice, fleet, backends) -> int:
    """A pool of :data:`POOL_SITES` sites on the module's nodes; returns the id of the
    one alice changes."""
    backend = backends.start("app")
    upstream = [{"host": "127.0.0.1", "port": backend.port}]
    admin.max_sites = POOL_SITES + 10
    for index in range(POOL_SITES - 1):
        factories.make_site(admin, f"filler{index:04d}.example.org", backends=upstream)
    site = factories.make_site(alice, "gen.example.com", headers={"X-Version": "0"},
                               backends=upstream)
    first = deploy(alice, site.id)
    assert first.status == DeploymentStatus.SUCCEEDED, first.error
    return site.id


def served_versions(fleet: list[FleetNode]) -> set[str]:
    """The header every fresh connection to every node gets, right now."""
    return {node.get("gen.example.com").headers.get("x-version", "-")
            for node in fleet for _ in range(FRESH_REQUESTS)}


def test_once_a_rollout_succeeds_no_fresh_connection_meets_the_old_configuration(
        alice, fleet, pool):
    for version in range(1, 4):
        sites.update_site(alice, pool, {"headers": {"X-Version": str(version)}})
        rollout = deploy(alice, pool)
        assert rollout.status == DeploymentStatus.SUCCEEDED, rollout.error
        assert served_versions(fleet) == {str(version)}


def test_a_keepalive_shorter_than_the_test_proves_nothing_and_is_not_taken_for_a_reload(
        app, admin, alice, fleet, pool, monkeypatch):
    """The nodes close idle connections after a second and their test takes two: the
    connection verification holds goes before the reload starts.  It must not be
    taken for the old workers retiring; the rollout still waits for the new ones."""
    monkeypatch.setitem(app.config, "ALLOW_CUSTOM_NODE_COMMANDS", True)
    for node in fleet:
        text = node.nginx.main_conf.read_text()
        node.nginx.main_conf.write_text(text.replace("http {", "http {\n    keepalive_timeout 1s;",
                                                     1))
        os.kill(node.nginx.master_pid(), signal.SIGHUP)
        test = node.nginx.spec.test_command
        nodes.update_node(admin, node.id, {"test_command": f"sh -c 'sleep 2 && {test}'"})
    for version in (11, 12):
        sites.update_site(alice, pool, {"headers": {"X-Version": str(version)}})
        rollout = deploy(alice, pool)
        assert rollout.status == DeploymentStatus.SUCCEEDED, rollout.error
        assert served_versions(fleet) == {str(version)}
