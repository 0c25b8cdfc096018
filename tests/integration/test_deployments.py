"""Deployments end to end: real sshd, real nginx nodes on 127.0.0.x, real HTTP.

Every fault leaves each node serving its previous configuration, byte for byte,
with the failure recorded and explained.
"""

from __future__ import annotations

import http.client
import json
import random
import shlex
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.errors import Conflict, NotFound
from app.extensions import ssh
from app.models import AuditLog, DeploymentStatus, Node, NodeDeployment, Rollout, Site
from app.services import deployments, node_actions, nodes, sites
from app.services.deployments.release import STAGE_SCRIPT
from app.services.node_leases import node_lease
from tests import factories
from tests.caddy_node import CaddyNode
from tests.conftest import api_headers
from tests.fleet import (
    FleetNode,
    register,
    register_caddy,
    release_dirs,
    start_fleet,
    start_nginx,
)
from tests.nginx_node import NginxNode
from tests.sshd import FaultyRelay


@pytest.fixture()
def fleet(app, admin, sshd) -> Iterator[list[FleetNode]]:
    """Five nginx nodes, every one stopped at the end even if stopping another fails."""
    with ExitStack() as teardown:
        teardown.callback(ssh.reset, app)
        started = start_fleet(teardown, [f"127.0.0.{10 + index}" for index in range(5)])
        yield [register(admin, nginx, f"edge-{i}", sshd.port, sshd.client_key_text)
               for i, nginx in enumerate(started)]


@pytest.fixture()
def failing_commands(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``false`` as a node's command, the simplest failure, is no engine's known form:
    these tests run with an administrator's own commands allowed."""
    monkeypatch.setitem(app.config, "ALLOW_CUSTOM_NODE_COMMANDS", True)


def deploy(actor: Any, site: Site, **kwargs: Any) -> Rollout:
    rollout = deployments.deploy_site(actor, site.id, **kwargs)
    return deployments.wait(rollout.id, timeout=120)


def node_statuses(rollout: Rollout) -> dict[str, str]:
    return {d.node_name: d.status.value for d in rollout.deployments}


def test_a_site_answers_through_every_node_then_changes_then_rolls_back(
        admin, alice, fleet, backends):
    first, second = backends.start("first"), backends.start("second")
    site = factories.make_site(alice, "shop.example.com",
                               backends=[{"host": "127.0.0.1", "port": first.port}])
    rollout = deploy(alice, site)
    assert rollout.status == DeploymentStatus.SUCCEEDED, rollout.error
    assert set(node_statuses(rollout).values()) == {"succeeded"}
    for node in fleet:
        answer = node.get("shop.example.com")
        assert answer.status == 200 and answer.json()["backend"] == "first"
    site = sites.get_site(alice, site.id)
    assert (site.deployed_nodes, site.target_nodes) == (5, 5)
    versions = {d.node_id: d.config_version_id for d in rollout.deployments}

    sites.update_site(alice, site.id, {"backends": [{"host": "127.0.0.1", "port": second.port}]})
    changed = deploy(alice, site)
    assert changed.status == DeploymentStatus.SUCCEEDED, changed.error
    assert {n.get("shop.example.com").json()["backend"] for n in fleet} == {"second"}

    for node in fleet:
        back = deployments.wait(deployments.rollback_node(admin, node.id, versions[node.id]).id)
        assert back.status == DeploymentStatus.SUCCEEDED, back.error
    assert {n.get("shop.example.com").json()["backend"] for n in fleet} == {"first"}


def test_the_api_answers_202_then_reports_each_node(app, admin, alice, fleet, backends):
    backend = backends.start("api")
    site = factories.make_site(alice, "api.example.com",
                               backends=[{"host": "127.0.0.1", "port": backend.port}])
    http = app.test_client()
    started = http.post(f"/api/v1/sites/{site.id}/deploy", headers=api_headers(alice))
    assert started.status_code == 202
    rollout_id = started.get_json()["id"]
    deployments.wait(rollout_id)
    body = http.get(f"/api/v1/deployments/{rollout_id}", headers=api_headers(alice)).get_json()
    assert body["status"] == "succeeded"
    # A client reads how many nodes took the change, never the fleet's node names.
    assert sorted(n["node"] for n in body["nodes"]) == [f"node {i}"
                                                        for i in range(1, len(fleet) + 1)]
    assert body["deployed"] == len(fleet) and all(n["node_id"] is None for n in body["nodes"])
    as_admin = http.get(f"/api/v1/deployments/{rollout_id}", headers=api_headers(admin))
    assert sorted(n["node"] for n in as_admin.get_json()["nodes"]) == [n.name for n in fleet]
    assert set().union(*(s.keys() for s in body["nodes"][0]["steps"])) == {"step", "seconds",
                                                                            "ok"}
    steps = as_admin.get_json()["nodes"][0]["steps"]
    # A node's first deployment keeps the operator's directory aside ("adopt"); later
    # ones build the release from the live one in the upload step.
    first = ["adopt", "swap"] if steps[2].get("mode") == "adopt" else []
    assert [s["step"] for s in steps] == ["lock", "render", "upload", *first, "test", "reload",
                                          "verify"]
    listed = http.get(f"/api/v1/sites/{site.id}/deployments",
                      headers=api_headers(alice)).get_json()
    assert [item["id"] for item in listed["items"]] == [rollout_id]


def test_the_system_deploys_a_site_without_a_user(alice, bob, fleet, backends, db):
    """A certificate renewal deploys as the system: no tenancy scope, no user named."""
    backend = backends.start("system")
    site = factories.make_site(bob, "renewed.example.com",
                               backends=[{"host": "127.0.0.1", "port": backend.port}],
                               headers={"X-Renewed": "yes"})
    rollout = deployments.wait(deployments.deploy_site(None, site.id).id, timeout=120)
    assert rollout.status == DeploymentStatus.SUCCEEDED, rollout.error
    assert rollout.triggered_by_id is None
    assert {d.triggered_by_id for d in rollout.deployments} == {None}
    assert all(d.config_version.created_by_id is None for d in rollout.deployments)
    assert {n.get("renewed.example.com").headers["x-renewed"] for n in fleet} == {"yes"}
    entry = db.session.query(AuditLog).filter_by(action="site.deploy",
                                                 object_id=str(site.id)).one()
    assert entry.user_id is None and entry.username == "system"
    assert entry.details["rollout"] == rollout.id
    # Another client still cannot see it, and cannot deploy it either.
    with pytest.raises(NotFound):
        deployments.get_rollout(alice, rollout.id)
    with pytest.raises(NotFound):
        deployments.deploy_site(alice, site.id)
    with pytest.raises(NotFound):
        deployments.deploy_site(None, 10**9)


def _as_utc(moment: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; they were written in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _serving_before(fleet: list[FleetNode]) -> dict[str, Any]:
    return {node.name: (node.snapshot(), node.get("shop.example.com").json()["backend"])
            for node in fleet}


def _assert_unchanged(fleet: list[FleetNode], before: dict[str, Any]) -> None:
    for node in fleet:
        assert node.snapshot() == before[node.name][0], node.name
        assert node.get("shop.example.com").json()["backend"] == before[node.name][1]


@pytest.fixture()
def live_site(alice, fleet, backends) -> Site:
    backend = backends.start("live")
    site = factories.make_site(alice, "shop.example.com",
                               backends=[{"host": "127.0.0.1", "port": backend.port}])
    assert deploy(alice, site).status == DeploymentStatus.SUCCEEDED
    return site


def test_a_version_the_test_command_refuses_is_set_aside_and_changes_nothing(
        alice, fleet, live_site, db):
    before = _serving_before(fleet)
    # Resolving a backend name needs DNS, which this loopback-only machine lacks:
    # nginx -t fails on every node.
    sites.update_site(alice, live_site.id, {"backends": [{"host": "backend.invalid",
                                                          "port": 80}]})
    rollout = deploy(alice, live_site)
    assert rollout.status == DeploymentStatus.FAILED
    assert "refused this version of the site" in rollout.error
    assert "backend.invalid" in rollout.error
    # Each node set the site aside: it took the pool with the site's previous
    # version, which is the very configuration it ran.
    assert {d.status for d in rollout.deployments} == {DeploymentStatus.SUCCEEDED}
    _assert_unchanged(fleet, before)
    # The live release, the one before it (kept until the next deployment) and the
    # adopted original.
    assert all(len(release_dirs(node)) == 3 for node in fleet)
    site = sites.get_site(alice, live_site.id)
    assert site.deployed_nodes == 0 and site.status.value == "failed"
    assert "backend.invalid" in site.last_deploy_error
    assert site.refused_version == site.config_version


def test_a_failing_reload_restores_the_previous_files(admin, alice, fleet, live_site,
                                                        failing_commands):
    before = _serving_before(fleet)
    nodes.update_node(admin, fleet[0].id, {"reload_command": "false"})
    sites.update_site(alice, live_site.id, {"headers": {"X-Shop": "v2"}})
    rollout = deploy(alice, live_site)
    statuses = node_statuses(rollout)
    assert statuses.pop("edge-0") == "failed"
    assert set(statuses.values()) == {"succeeded"}
    failed = next(d for d in rollout.deployments if d.node_name == "edge-0")
    assert failed.error.startswith("reload: reload failed")
    assert fleet[0].snapshot() == before["edge-0"][0]
    site = sites.get_site(alice, live_site.id)
    assert (site.deployed_nodes, site.target_nodes) == (4, 5)


def test_an_unreachable_node_fails_alone(admin, alice, fleet, live_site, backends):
    before = _serving_before(fleet)
    from tests.processes import free_port
    nodes.update_node(admin, fleet[1].id, {"ssh_port": free_port()})
    other = backends.start("other")
    sites.update_site(alice, live_site.id,
                      {"backends": [{"host": "127.0.0.1", "port": other.port}]})
    rollout = deploy(alice, live_site)
    statuses = node_statuses(rollout)
    assert statuses.pop("edge-1") == "failed"
    assert set(statuses.values()) == {"succeeded"}
    assert "Unreachable" in next(d for d in rollout.deployments if d.node_name == "edge-1").error
    assert fleet[1].snapshot() == before["edge-1"][0]
    assert fleet[1].get("shop.example.com").json()["backend"] == "live"
    assert {n.get("shop.example.com").json()["backend"] for n in fleet[2:]} == {"other"}


def test_a_canary_failure_stops_the_rollout(admin, alice, fleet, live_site, failing_commands):
    before = _serving_before(fleet)
    nodes.update_node(admin, fleet[2].id, {"test_command": "false"})
    sites.update_site(alice, live_site.id, {"headers": {"X-Shop": "v2"}})
    rollout = deploy(alice, live_site, canary_node="edge-2")
    assert rollout.status == DeploymentStatus.FAILED
    assert "canary" in rollout.error
    statuses = node_statuses(rollout)
    assert statuses.pop("edge-2") == "failed"
    assert set(statuses.values()) == {"skipped"}
    _assert_unchanged(fleet, before)


def test_versions_are_recorded_and_diffable(admin, alice, fleet, live_site, db):
    sites.update_site(alice, live_site.id, {"headers": {"X-Shop": "v2"}})
    assert deploy(alice, live_site).status == DeploymentStatus.SUCCEEDED
    page = deployments.list_versions(admin, fleet[0].id)
    assert [v.version for v in page.items] == [2, 1]
    diff = deployments.diff_versions(admin, fleet[0].id, page.items[1].id, page.items[0].id)
    assert '+    add_header X-Shop "v2" always;' in diff
    assert db.session.query(NodeDeployment).filter_by(node_id=fleet[0].id).count() == 2


def test_drift_is_detected_and_cleared_by_a_deploy(admin, alice, fleet, live_site):
    assert deployments.check_drift(admin, fleet[0].id).drifted is False
    conf = fleet[0].nginx.config_dir / "sites" / "shop.example.com.conf"
    conf.write_text(conf.read_text() + "\n# edited by hand\n")
    node = deployments.check_drift(admin, fleet[0].id)
    assert node.drifted and "changed sites/shop.example.com.conf" in node.drift_details
    assert deploy(alice, live_site).status == DeploymentStatus.SUCCEEDED
    assert deployments.check_drift(admin, fleet[0].id).drifted is False


def test_host_key_pinned_on_first_contact(db, fleet, live_site, sshd):
    node = db.session.get(Node, fleet[0].id)
    assert node.host_key is not None
    assert node.host_key.split()[:2] == sshd.host_key_line.split()[:2]


def test_a_connection_dropped_during_the_upload_changes_nothing(
        app, admin, alice, fleet, live_site, sshd, monkeypatch):
    relay = FaultyRelay(sshd.port)
    try:
        victim = fleet[0]
        nodes.update_node(admin, victim.id, {"ssh_port": relay.port})
        before = _serving_before(fleet)
        pool = ssh.pool(app)
        run, run_chain = pool.run, pool.run_chain

        def cut_midway(target: Any) -> None:
            run(target, ["true"])  # connected through the relay before the cut
            relay.refuse()  # the node stays gone after the cut
            relay.drop_after(2500)  # past the command, into the archive

        def run_cut(target: Any, argv: list[str], **kwargs: Any) -> Any:
            if target.node_id == victim.id and STAGE_SCRIPT in argv:
                cut_midway(target)
            return run(target, argv, **kwargs)

        def chain_cut(target: Any, commands: Any, **kwargs: Any) -> Any:
            # The staging command, with the test and the reload after it in its session.
            if target.node_id == victim.id and STAGE_SCRIPT in commands[0]:
                cut_midway(target)
            return run_chain(target, commands, **kwargs)

        monkeypatch.setattr(pool, "run", run_cut)
        monkeypatch.setattr(pool, "run_chain", chain_cut)
        sites.update_site(alice, live_site.id, {"headers": {"X-Shop": "v2"}})
        rollout = deploy(alice, live_site)
        failed = next(d for d in rollout.deployments if d.node_name == victim.name)
        assert failed.status == DeploymentStatus.FAILED
        assert [s["step"] for s in failed.steps if not s["ok"]] == ["upload"]
        assert victim.snapshot() == before[victim.name][0]
        assert victim.get("shop.example.com").headers.get("x-shop") is None
        assert all(n.get("shop.example.com").headers["x-shop"] == "v2" for n in fleet[1:])

        # Back online: the next deployment sweeps the partial release and succeeds.
        monkeypatch.setattr(pool, "run", run)
        monkeypatch.setattr(pool, "run_chain", run_chain)
        relay.refuse(False)
        assert deploy(alice, live_site).status == DeploymentStatus.SUCCEEDED
        assert victim.get("shop.example.com").headers["x-shop"] == "v2"
        # The live release, the one before it and the adopted original: the partial
        # one went.
        assert len(release_dirs(victim)) == 3
    finally:
        relay.close()


def test_a_changed_host_key_is_refused_until_an_admin_accepts_it(
        admin, alice, fleet, live_site, sshd, db):
    before = _serving_before(fleet)
    new_key = sshd.regenerate_host_key()
    sites.update_site(alice, live_site.id, {"headers": {"X-Shop": "v2"}})
    rollout = deploy(alice, live_site)
    assert set(node_statuses(rollout).values()) == {"failed"}
    assert all("host key" in d.error and "accept" in d.error for d in rollout.deployments)
    _assert_unchanged(fleet, before)
    for node in fleet:
        row = db.session.get(Node, node.id)
        db.session.refresh(row)
        assert row.pending_host_key.split()[:2] == new_key.split()[:2]
        node_actions.accept_host_key(admin, node.id)
    assert deploy(alice, live_site).status == DeploymentStatus.SUCCEEDED
    assert {n.get("shop.example.com").headers["x-shop"] for n in fleet} == {"v2"}


def test_a_deployment_waits_for_the_node_lock(app, alice, fleet, live_site):
    sites.update_site(alice, live_site.id, {"headers": {"X-Shop": "locked"}})
    with node_lease(fleet[0].id, ttl=60, wait=5):
        rollout = deployments.deploy_site(alice, live_site.id)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rows = {d.node_name: d for d in deployments.wait(rollout.id, timeout=0.2).deployments}
            if all(rows[n.name].status.finished for n in fleet[1:]):
                break
        assert rows["edge-0"].status == DeploymentStatus.RUNNING
        assert rows["edge-0"].step == "lock"
        assert fleet[0].get("shop.example.com").headers.get("x-shop") is None
    done = deployments.wait(rollout.id)
    assert done.status == DeploymentStatus.SUCCEEDED
    assert fleet[0].get("shop.example.com").headers["x-shop"] == "locked"


def test_two_deployments_at_once_serialize_and_the_later_wins(app, alice, fleet, live_site,
                                                              backends, db):
    later = backends.start("later")
    sites.update_site(alice, live_site.id, {"headers": {"X-Shop": "earlier"}})
    first = deployments.deploy_site(alice, live_site.id)
    # Once a node has rendered the first, a new request cannot join it: a second one.
    deadline = time.monotonic() + 30
    while not any(d.step not in ("", "lock") for d in deployments.wait(
            first.id, timeout=0.05).deployments):
        assert time.monotonic() < deadline
    sites.update_site(alice, live_site.id,
                      {"backends": [{"host": "127.0.0.1", "port": later.port}]})
    second = deployments.deploy_site(alice, live_site.id)
    assert second.id != first.id
    for rollout_id in (first.id, second.id):
        assert deployments.wait(rollout_id).status == DeploymentStatus.SUCCEEDED
    for node in fleet:
        assert node.get("shop.example.com").json()["backend"] == "later"
        steps = (db.session.query(NodeDeployment).filter_by(node_id=node.id)
                 .order_by(NodeDeployment.started_at).all())[-2:]
        # Never both on the node: one finished before the other left its lock step.
        one, two = sorted(steps, key=lambda d: d.finished_at)
        # The second got the node's lock only after the first had finished.
        locked = _as_utc(two.started_at) + timedelta(seconds=two.steps[0]["seconds"])
        assert two.steps[0]["step"] == "lock"
        assert _as_utc(one.finished_at) <= locked + timedelta(milliseconds=50)
        assert deployments.current_version(node.id).version == 3


def test_a_burst_of_deploy_requests_joins_the_rollout_no_node_has_started(
        app, alice, fleet, live_site):
    """50 parallel API requests while every node is busy: they all join one queued
    rollout instead of starting 50 that would each wait for the leases."""
    sites.update_site(alice, live_site.id, {"headers": {"X-Shop": "burst"}})
    headers, url = api_headers(alice), f"/api/v1/sites/{live_site.id}/deploy"
    answers: list[tuple[int, int]] = []
    with ExitStack() as held:
        for node in fleet:
            held.enter_context(node_lease(node.id, ttl=60, wait=5))

        def request() -> None:
            response = app.test_client().post(url, headers=headers)
            answers.append((response.status_code, response.get_json()["id"]))

        threads = [threading.Thread(target=request) for _ in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert len(answers) == 50 and {status for status, _ in answers} == {202}
    rollouts = {rollout_id for _, rollout_id in answers}
    assert len(rollouts) <= 2, rollouts
    for rollout_id in rollouts:
        assert deployments.wait(rollout_id, timeout=120).status == DeploymentStatus.SUCCEEDED
    assert all(node.get("shop.example.com").headers["x-shop"] == "burst" for node in fleet)


def test_a_node_named_twice_in_one_rollout_takes_one_deployment_after_the_other(
        admin, fleet, live_site):
    rollout = deployments.wait(deployments.deploy_nodes(admin, [fleet[0].id] * 2).id)
    assert rollout.status == DeploymentStatus.SUCCEEDED, rollout.error
    one, two = sorted(rollout.deployments, key=lambda d: d.finished_at)
    locked = _as_utc(two.started_at) + timedelta(seconds=two.steps[0]["seconds"])
    assert two.steps[0]["step"] == "lock"
    assert _as_utc(one.finished_at) <= locked + timedelta(milliseconds=50)
    assert deployments.current_version(fleet[0].id).version == 3


def test_no_partial_config_after_deployments_with_random_faults(
        app, admin, alice, fleet, live_site, backends, sshd, db, failing_commands):
    """Bounded in count and time: every node always holds exactly one recorded version."""
    rng = random.Random(20261123)
    relay = FaultyRelay(sshd.port)
    spare = backends.start("spare")
    two = fleet[:2]
    for node in fleet[2:]:
        nodes.set_enabled(admin, node.id, False)
    nodes.update_node(admin, two[1].id, {"ssh_port": relay.port})
    started = time.monotonic()
    good_reload = db.session.get(Node, two[0].id).reload_command
    try:
        for round_number in range(50):
            if time.monotonic() - started > 240:
                break
            fault = rng.choice(["none", "none", "test", "reload", "down", "drop"])
            port = rng.choice([spare.port, backends.running[0].port])
            host = "backend.invalid" if fault == "test" else "127.0.0.1"
            sites.update_site(alice, live_site.id, {
                "headers": {"X-Round": str(round_number)},
                "backends": [{"host": host, "port": port}]})
            nodes.update_node(admin, two[0].id, {
                "reload_command": "false" if fault == "reload" else good_reload})
            relay.refuse(fault == "down")
            if fault == "drop":
                relay.drop_after(rng.randint(500, 6000))
            rollout = deploy(alice, live_site)
            relay.drop_after(10**12)
            relay.refuse(False)
            for node in two:
                live = deployments.current_version(node.id)
                files = deployments.version_files(live, keys=True)
                on_disk = {p: (node.nginx.config_dir / p).read_text() for p in files}
                assert on_disk == files, (round_number, fault, node.name)
                assert sorted(node.snapshot()) == sorted(files)
                answer = node.get("shop.example.com")
                assert answer.status == 200
                carried = live.site_versions[str(live_site.id)]
                assert answer.headers.get("x-round") == (
                    None if carried == 1 else str(carried - 2)), (
                    round_number, fault, node.name,
                    [(d.node_name, d.status.value, d.error[:200]) for d in rollout.deployments])
            if fault == "none":
                assert rollout.status == DeploymentStatus.SUCCEEDED, rollout.error
    finally:
        relay.close()


def test_the_cli_deploys_lists_versions_and_rolls_back(app, alice, fleet, live_site, backends):
    runner = app.test_cli_runner()
    other = backends.start("cli")
    sites.update_site(alice, live_site.id,
                      {"backends": [{"host": "127.0.0.1", "port": other.port}]})
    deployed = runner.invoke(args=["sites", "deploy", "shop.example.com"])
    assert deployed.exit_code == 0, deployed.output
    assert "deployment" in deployed.output and deployed.output.count(": succeeded") == 6
    assert {n.get("shop.example.com").json()["backend"] for n in fleet} == {"cli"}
    listed = runner.invoke(args=["nodes", "versions", "edge-0"])
    assert listed.output.splitlines()[0].startswith("* v2")
    back = runner.invoke(args=["nodes", "rollback", "edge-0", "1"])
    assert back.exit_code == 0, back.output
    assert fleet[0].get("shop.example.com").json()["backend"] == "live"
    drift = runner.invoke(args=["nodes", "drift", "edge-0"])
    assert drift.exit_code == 0 and "no drift" in drift.output
    check = runner.invoke(args=["nodes", "check", "edge-0"])
    assert check.exit_code == 0 and "ssh: ok" in check.output and "service: ok" in check.output
    missing = runner.invoke(args=["sites", "deploy", "nope.example.com"])
    assert missing.exit_code != 0 and "no site 'nope.example.com'" in missing.output
    ghost = runner.invoke(args=["nodes", "versions", "ghost"])
    assert ghost.exit_code != 0 and "no node named 'ghost'" in ghost.output
    unknown = runner.invoke(args=["nodes", "rollback", "edge-0", "99"])
    assert unknown.exit_code != 0 and "the node has no version 99" in unknown.output


def test_a_caddy_node_takes_the_same_deployment_as_the_nginx_nodes(
        app, admin, alice, fleet, backends, sshd, tmp_path):
    caddy = CaddyNode(tmp_path, listen_address="127.0.0.30")
    caddy.apply([])
    try:
        spec = caddy.spec
        register_caddy(admin, caddy, "caddy-0", sshd.port, sshd.client_key_text)
        backend = backends.start("both")
        site = factories.make_site(alice, "mixed.example.com",
                                   backends=[{"host": "127.0.0.1", "port": backend.port}],
                                   headers={"X-Fleet": "one"})
        rollout = deploy(alice, site)
        assert rollout.status == DeploymentStatus.SUCCEEDED, rollout.error
        assert len(rollout.deployments) == 6
        conn = http.client.HTTPConnection(caddy.host, spec.http_port, timeout=10)
        conn.request("GET", "/", headers={"Host": "mixed.example.com"})
        answer = conn.getresponse()
        assert answer.status == 200 and answer.getheader("X-Fleet") == "one"
        assert json.loads(answer.read())["backend"] == "both"
        conn.close()
        assert fleet[0].get("mixed.example.com").headers["x-fleet"] == "one"
        # nginx refuses a backend name it cannot resolve and keeps the site's previous
        # version; Caddy resolves names per request, takes the version, and answers
        # 502 for it: a warning for the site's owner.
        sites.update_site(alice, site.id, {"backends": [{"host": "backend.invalid",
                                                         "port": 80}]})
        rollout = deploy(alice, site)
        assert rollout.status == DeploymentStatus.FAILED
        assert "backend.invalid" in rollout.error
        assert fleet[0].get("mixed.example.com").json()["backend"] == "both"
        refused = sites.get_site(alice, site.id)
        assert (refused.deployed_nodes, refused.target_nodes) == (1, 6)
        assert "answered HTTP 50" in refused.deploy_warning
    finally:
        caddy.stop()


def test_prepare_makes_a_bare_node_deployable_and_is_idempotent(
        admin, alice, sshd, backends, db, app):
    nginx = NginxNode(address="127.0.0.40")
    try:
        conf_d = nginx.prefix / "conf.d"
        conf_d.mkdir()
        nginx.write_main_conf(f"include {conf_d}/*.conf;")
        shutil.rmtree(nginx.config_dir)
        nginx.start()
        row = register(admin, nginx, "bare-0", sshd.port, sshd.client_key_text,
                       main_config=str(conf_d / "rpcc.conf"))
        first = node_actions.prepare_node(admin, row.id)
        assert any(step.startswith("nginx already installed") for step in first)
        assert f"created {nginx.config_dir}" in first
        assert f"added the include line to {conf_d / 'rpcc.conf'}" in first
        assert first[-2:] == ["test command passes", "reloaded"]
        assert (conf_d / "rpcc.conf").read_text() == (
            f"include {nginx.config_dir}/rpcc.conf;\n")
        again = node_actions.prepare_node(admin, row.id)
        assert f"{nginx.config_dir} exists" in again
        assert f"{conf_d / 'rpcc.conf'} already loads {nginx.config_dir}" in again
        assert (conf_d / "rpcc.conf").read_text().count("include") == 1

        checked = node_actions.check_node(admin, row.id)
        assert checked.status.value == "online", checked.last_check
        assert all(part["ok"] for part in checked.last_check.values())

        backend = backends.start("prepared")
        site = factories.make_site(alice, "fresh.example.com",
                                   backends=[{"host": "127.0.0.1", "port": backend.port}])
        assert deploy(alice, site).status == DeploymentStatus.SUCCEEDED
        assert row.get("fresh.example.com").json()["backend"] == "prepared"

        # Disabled, then draining: the node gets no more deployments.
        nodes.set_enabled(admin, row.id, False)
        with pytest.raises(Conflict):
            deployments.deploy_site(alice, site.id)
        nodes.set_enabled(admin, row.id, True)
        nodes.drain_node(admin, row.id)
        with pytest.raises(Conflict):
            deployments.deploy_site(alice, site.id)
    finally:
        nginx.stop()
        nginx.remove()
        ssh.reset(app)



def test_a_node_that_stops_answering_after_the_swap_gets_its_previous_release_back(
        app, admin, alice, fleet, live_site, sshd, monkeypatch, db):
    relay = FaultyRelay(sshd.port)
    try:
        victim = fleet[3]
        nodes.update_node(admin, victim.id, {"ssh_port": relay.port})
        before = _serving_before(fleet)
        monkeypatch.setitem(app.config, "SSH_OPERATION_TIMEOUT", 3.0)
        ssh.reset(app)
        pool = ssh.pool(app)
        run_chain = pool.run_chain
        # A test that takes a second: the stall lands while it runs, not after it
        # (the node goes on with the reload while the control plane is still reading).
        monkeypatch.setitem(app.config, "ALLOW_CUSTOM_NODE_COMMANDS", True)
        slow_test = f"sh -c 'sleep 1; exec {db.session.get(Node, victim.id).test_command}'"
        nodes.update_node(admin, victim.id, {"test_command": slow_test})
        test_command = shlex.split(slow_test)

        def cut_during_test(target: Any, commands: Any, **kwargs: Any) -> Any:
            argvs = [list(argv) for argv in commands]
            if target.node_id != victim.id or test_command not in argvs:
                return run_chain(target, commands, **kwargs)
            testing = argvs.index(test_command)
            on_next = kwargs.pop("on_next")

            def stall_at_the_test(index: int) -> None:
                on_next(index)
                if index == testing:
                    relay.stall()  # the node stops answering while it tests

            try:
                if testing == 0:
                    relay.stall()
                return run_chain(target, commands, on_next=stall_at_the_test, **kwargs)
            finally:
                relay.resume()

        monkeypatch.setattr(pool, "run_chain", cut_during_test)
        sites.update_site(alice, live_site.id, {"headers": {"X-Shop": "v3"}})
        rollout = deploy(alice, live_site)
        failed = next(d for d in rollout.deployments if d.node_name == victim.name)
        assert failed.status == DeploymentStatus.FAILED
        assert failed.error.startswith("test: ")
        assert victim.snapshot() == before[victim.name][0]
        assert victim.get("shop.example.com").headers.get("x-shop") is None
        assert db.session.get(Node, victim.id).drifted is False
    finally:
        relay.close()


def test_a_failed_first_deployment_gives_the_operator_directory_back(
        app, admin, alice, sshd, backends, monkeypatch):
    nginx = start_nginx("127.0.0.41")
    try:
        node = register(admin, nginx, "first-0", sshd.port, sshd.client_key_text)
        original = node.snapshot()
        # A node that refuses every configuration (no site to blame).
        monkeypatch.setitem(app.config, "ALLOW_CUSTOM_NODE_COMMANDS", True)
        nodes.update_node(admin, node.id, {"test_command": "false"})
        site = factories.make_site(alice, "first.example.com")
        rollout = deploy(alice, site)
        assert rollout.status == DeploymentStatus.FAILED
        assert nginx.config_dir.is_dir() and not nginx.config_dir.is_symlink()
        assert node.snapshot() == original
        assert release_dirs(node) == []
    finally:
        nginx.stop()
        nginx.remove()
        ssh.reset(app)


def test_a_client_never_reads_another_tenants_names_in_node_errors(
        app, admin, alice, bob, fleet, live_site, alice_client, monkeypatch):
    # Bob's broken backend makes every node's test fail, quoting his upstream; the
    # node sets his site aside and takes Alice's.  Another node fails for a reason
    # of its own, which Alice reads in general words.
    factories.make_site(bob, "bob-secret.example.com",
                        backends=[{"host": "bob-internal.invalid", "port": 80}])
    monkeypatch.setitem(app.config, "ALLOW_CUSTOM_NODE_COMMANDS", True)
    nodes.update_node(admin, fleet[0].id, {"reload_command": "false"})
    sites.update_site(alice, live_site.id, {"headers": {"X-Shop": "v2"}})
    rollout = deploy(alice, live_site)
    assert rollout.status == DeploymentStatus.FAILED
    raw = next(d.error for d in rollout.deployments if d.node_name == "edge-0")
    assert raw.startswith("reload: reload failed")  # what the node printed, as admins see it
    as_alice = app.test_client().get(f"/api/v1/deployments/{rollout.id}",
                                     headers=api_headers(alice)).get_json()
    shown = as_alice["error"] + "".join(n["error"] + n["message"] for n in as_alice["nodes"])
    assert "The proxy could not load the new configuration" in shown
    assert "bob-internal" not in shown and "bob-secret" not in shown
    assert not any(node.name in shown for node in fleet)
    page = alice_client.get(f"/client/deployments/{rollout.id}").get_data(as_text=True)
    site_page = alice_client.get(f"/client/sites/{live_site.id}").get_data(as_text=True)
    for text in (page, site_page):
        assert "bob-internal" not in text and "bob-secret" not in text
    as_admin = app.test_client().get(f"/api/v1/deployments/{rollout.id}",
                                     headers=api_headers(admin)).get_json()
    assert "edge-0" in as_admin["error"]
    bob_site = Site.query.filter_by(domain="bob-secret.example.com").one()
    entry = AuditLog.query.filter_by(action="site.set_aside", object_id=str(bob_site.id)).one()
    assert "bob-internal.invalid" in entry.details["node_output"]


def _wait_serving(node: FleetNode, backend: str, timeout: float = 10.0) -> str:
    """Which backend the node's shop site reaches, once it is ``backend`` or when
    ``timeout`` is up (a reload's old workers may answer for a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = node.get("shop.example.com")
        seen = answer.json()["backend"] if answer.status == 200 else f"HTTP {answer.status}"
        if seen == backend or time.monotonic() >= deadline:
            return seen
        time.sleep(0.05)


def test_a_failed_release_that_cannot_be_removed_still_gets_the_previous_one_reloaded(
        app, admin, alice, fleet, live_site, sshd, monkeypatch, db):
    """Removing the failed release is tidying up: a stall while doing it must not skip
    reloading the previous release, nor flag a node whose previous release is live."""
    relay = FaultyRelay(sshd.port)
    try:
        victim = fleet[4]
        nodes.update_node(admin, victim.id, {"ssh_port": relay.port})
        before = _serving_before(fleet)
        monkeypatch.setitem(app.config, "SSH_OPERATION_TIMEOUT", 2.0)
        monkeypatch.setitem(app.config, "SSH_RETRIES", 0)
        monkeypatch.setitem(app.config, "DEPLOY_VERIFY_TIMEOUT", 2.0)
        ssh.reset(app)
        pool = ssh.pool(app)
        run = pool.run
        stalled: list[str] = []

        def stall_while_removing(target: Any, argv: list[str], **kwargs: Any) -> Any:
            if target.node_id != victim.id or argv[:2] != ["rm", "-rf"]:
                return run(target, argv, **kwargs)
            stalled.append(argv[-1])
            relay.stall()  # the node stops answering while the failed release goes
            try:
                return run(target, argv, **kwargs)
            finally:
                relay.resume()

        monkeypatch.setattr(pool, "run", stall_while_removing)
        # A reload that does nothing: the node never answers with the new
        # configuration's probe, and verification fails.
        monkeypatch.setitem(app.config, "ALLOW_CUSTOM_NODE_COMMANDS", True)
        nodes.update_node(admin, victim.id, {"reload_command": "true"})
        sites.update_site(alice, live_site.id, {"headers": {"X-Shop": "v2"}})
        rollout = deployments.wait(deployments.deploy_nodes(admin, [victim.id]).id)
        [failed] = rollout.deployments
        assert failed.status == DeploymentStatus.ROLLED_BACK, failed.error
        assert failed.error.startswith("verify: ") and "could not be put back" not in failed.error
        assert stalled, "the failed release was never removed"
        assert victim.snapshot() == before[victim.name][0]
        assert _wait_serving(victim, "live") == "live"
        db.session.expire_all()
        assert db.session.get(Node, victim.id).drifted is False
    finally:
        relay.close()


def test_a_host_key_changed_after_the_swap_is_recorded_and_the_node_flagged(
        app, admin, alice, fleet, live_site, sshd, monkeypatch, db):
    """The release was swapped in when the node came back with another key: the
    previous one cannot be put back, so the node is flagged for a drift check, and
    the key waits for an administrator as before the swap."""
    victim = fleet[0]
    pool = ssh.pool(app)
    run_chain = pool.run_chain
    new_key: list[str] = []

    def key_changes_during_the_test(target: Any, commands: Any, **kwargs: Any) -> Any:
        if target.node_id != victim.id or new_key:
            return run_chain(target, commands, **kwargs)
        testing = [list(argv) for argv in commands].index(test_command)
        on_next = kwargs.pop("on_next")

        def crash_at_the_test(index: int) -> None:
            on_next(index)
            if index == testing:
                # The node's sshd dies with the session, after the swap, and comes
                # back with another key: putting the previous release back meets it.
                sshd.kill_sessions()
                new_key.append(sshd.regenerate_host_key())

        return run_chain(target, commands, on_next=crash_at_the_test, **kwargs)

    # A test that takes a second: the crash lands while it runs, not after it (the
    # node goes on with the reload while the control plane is still reading).
    monkeypatch.setitem(app.config, "ALLOW_CUSTOM_NODE_COMMANDS", True)
    slow_test = f"sh -c 'sleep 1; exec {db.session.get(Node, victim.id).test_command}'"
    nodes.update_node(admin, victim.id, {"test_command": slow_test})
    test_command = shlex.split(slow_test)
    monkeypatch.setattr(pool, "run_chain", key_changes_during_the_test)
    sites.update_site(alice, live_site.id, {"headers": {"X-Shop": "v2"}})
    rollout = deployments.wait(deployments.deploy_nodes(admin, [victim.id]).id)
    [failed] = rollout.deployments
    assert failed.status == DeploymentStatus.FAILED
    assert failed.error.startswith("test: ") and "host key" in failed.error
    assert "could not be put back" in failed.error
    db.session.expire_all()
    row = db.session.get(Node, victim.id)
    assert row.drifted is True
    assert row.pending_host_key.split()[:2] == new_key[0].split()[:2]
