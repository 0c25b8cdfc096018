"""A release is built on the node from the live one: only the files whose content
changed travel, the result is byte for byte what a full upload gives, a failure puts
the previous release back exactly, and a node whose files are not what the control
plane last sent gets everything again.  Real sshd, real nginx, two nodes."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from app.extensions import ssh
from app.models import DeploymentStatus, NodeDeployment, Rollout, Site
from app.services import deployments, nodes, sites
from app.services.deployments.release import manifest_digest
from tests import factories
from tests.fleet import FleetNode

ADDRESSES = ("127.0.0.45", "127.0.0.46")


def deploy(actor: Any, site: Site) -> Rollout:
    return deployments.wait(deployments.deploy_site(actor, site.id).id, timeout=120)


def upload_step(deployment: NodeDeployment) -> dict[str, Any]:
    return next(step for step in deployment.steps if step["step"] == "upload")


def tree(node: FleetNode) -> dict[str, bytes]:
    root = node.nginx.config_dir
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def expected_tree(node: FleetNode) -> dict[str, bytes]:
    version = deployments.current_version(node.id)
    return {path: text.encode()
            for path, text in deployments.version_files(version, keys=True).items()}


@pytest.fixture()
def pool(alice, bob, fleet, backends) -> dict[str, Site]:
    """Six sites of two clients, live on both nodes."""
    backend = backends.start("app")
    made = {}
    for owner, name in [(alice, "a1"), (alice, "a2"), (alice, "a3"), (bob, "b1"), (bob, "b2"),
                        (bob, "b3")]:
        made[name] = factories.make_site(owner, f"{name}.example.com",
                                         backends=[{"host": "127.0.0.1",
                                                    "port": backend.port}])
    first = deploy(alice, made["a1"])
    assert first.status == DeploymentStatus.SUCCEEDED, first.error
    return made


def test_a_one_site_change_sends_only_the_files_it_changes(admin, alice, fleet, pool):
    before = {node.id: deployments.version_files(deployments.current_version(node.id),
                                                 keys=True) for node in fleet}
    sites.update_site(alice, pool["a2"].id, {"headers": {"X-Version": "2"}})
    rollout = deploy(alice, pool["a2"])
    assert rollout.status == DeploymentStatus.SUCCEEDED, rollout.error
    for deployment in rollout.deployments:
        after = deployments.version_files(deployments.current_version(deployment.node_id),
                                          keys=True)
        old = before[deployment.node_id]
        changed = sorted(path for path in after if old.get(path) != after[path])
        # The site's own file, and shared files that name the configuration.
        assert not any(name in path for path in changed for name in
                       ("a1.", "a3.", "b1.", "b2.", "b3."))
        step = upload_step(deployment)
        assert step["mode"] == "incremental"
        assert (step["files"], step["removed"]) == (len(changed), 0), (step, changed)
        assert step["files"] < len(after)
    for node in fleet:
        assert tree(node) == expected_tree(node)
        assert node.get("a2.example.com").headers["x-version"] == "2"


def test_a_one_site_change_is_staged_tested_and_reloaded_in_one_remote_session(
        app, alice, fleet, pool, monkeypatch):
    """The node holds the release last sent: building the new one, swapping it in,
    the test and the reload are one command session on the node, and each is still
    timed as its own step."""
    connector = ssh.pool(app)
    sessions: dict[int, list[list[str]]] = {node.id: [] for node in fleet}
    run, run_chain = connector.run, connector.run_chain

    def counting_run(target: Any, argv: list[str], **kwargs: Any) -> Any:
        sessions[target.node_id].append([argv[0]])
        return run(target, argv, **kwargs)

    def counting_chain(target: Any, commands: Any, **kwargs: Any) -> Any:
        sessions[target.node_id].append([argv[0] for argv in commands])
        return run_chain(target, commands, **kwargs)

    monkeypatch.setattr(connector, "run", counting_run)
    monkeypatch.setattr(connector, "run_chain", counting_chain)
    sites.update_site(alice, pool["a3"].id, {"headers": {"X-Version": "3"}})
    rollout = deploy(alice, pool["a3"])
    assert rollout.status == DeploymentStatus.SUCCEEDED, rollout.error
    for node in fleet:
        [session] = sessions[node.id]
        assert session[0] == "sh" and len(session) == 3  # staging, test, reload
        assert node.get("a3.example.com").headers["x-version"] == "3"
    for deployment in rollout.deployments:
        steps = [step["step"] for step in deployment.steps]
        assert steps[-4:] == ["upload", "test", "reload", "verify"], steps
        assert all(step["ok"] and step["seconds"] >= 0 for step in deployment.steps)


def test_an_incremental_release_is_identical_to_a_full_one(admin, alice, bob, fleet, pool):
    sites.update_site(alice, pool["a3"].id, {"headers": {"X-Version": "3"}})
    sites.delete_site(bob, pool["b3"].id)
    incremental = deploy(alice, pool["a3"])
    assert incremental.status == DeploymentStatus.SUCCEEDED, incremental.error
    assert all(upload_step(d)["removed"] >= 1 for d in incremental.deployments)
    built = {node.name: tree(node) for node in fleet}
    assert "b3.example.com.conf" not in str(sorted(built[fleet[0].name]))

    # The same state sent in full: a file changed behind the control plane's back,
    # found by the drift check, makes the node's release unknown: every file travels.
    for node in fleet:
        target = next(node.nginx.config_dir.rglob("*.conf"))
        target.write_text(target.read_text() + "# edited by hand\n")
        assert deployments.check_drift(admin, node.id).drifted
    full = deployments.wait(deployments.deploy_nodes(admin, [node.id for node in fleet]).id)
    assert full.status == DeploymentStatus.SUCCEEDED, full.error
    for deployment in full.deployments:
        step = upload_step(deployment)
        assert step["mode"] == "full" and step["files"] == len(expected_tree(fleet[0])), step
    for node in fleet:
        assert tree(node) == built[node.name] == expected_tree(node)


def test_unchanged_files_are_links_to_the_previous_release_until_it_goes(alice, fleet, pool):
    """Built from the live release: the unchanged files are the same inodes (nothing
    was sent or copied for them); the changed one is a new file, so the previous
    release, kept until verification passed, was never written through."""
    node = fleet[0]
    before = {path: os.stat(node.nginx.config_dir / path).st_ino for path in tree(node)}
    before_bytes = tree(node)
    sites.update_site(alice, pool["a1"].id, {"headers": {"X-Version": "4"}})
    assert deploy(alice, pool["a1"]).status == DeploymentStatus.SUCCEEDED
    after = {path: os.stat(node.nginx.config_dir / path).st_ino for path in tree(node)}
    changed = {path for path in after if tree(node)[path] != before_bytes.get(path)}
    assert changed and all(after[path] != before[path] for path in changed)
    unchanged = set(after) - changed
    assert unchanged and all(after[path] == before[path] for path in unchanged)


def test_a_refused_incremental_release_puts_the_previous_one_back_exactly(
        admin, alice, fleet, pool, monkeypatch, app):
    node = fleet[1]
    before = tree(node)
    before_hashes = node.snapshot()
    monkeypatch.setitem(app.config, "ALLOW_CUSTOM_NODE_COMMANDS", True)
    nodes.update_node(admin, node.id, {"test_command": "false"})
    sites.update_site(alice, pool["a2"].id, {"headers": {"X-Version": "refused"}})
    rollout = deploy(alice, pool["a2"])
    failed = next(d for d in rollout.deployments if d.node_id == node.id)
    assert failed.status == DeploymentStatus.FAILED
    assert upload_step(failed)["mode"] == "incremental"
    assert tree(node) == before and node.snapshot() == before_hashes
    releases = Path(str(node.nginx.config_dir) + ".releases")
    live = os.path.realpath(node.nginx.config_dir)
    # Only the live release of ours is left (and the operator's adopted original).
    assert [p for p in releases.iterdir() if p.name.startswith("v")] == [Path(live)]


def test_a_link_moved_behind_the_control_planes_back_is_looked_at_not_trusted(
        alice, fleet, pool):
    """The link points at a release the control plane did not swap in (an operator
    copied the live one): the node is read first, and as its files are the ones the
    control plane last sent, only the change travels."""
    node = fleet[0]
    live = Path(os.path.realpath(node.nginx.config_dir))
    copy = live.parent / "v999-by-hand"
    shutil.copytree(live, copy)
    temporary = node.nginx.config_dir.parent / "swap-by-hand"
    temporary.symlink_to(copy)
    temporary.replace(node.nginx.config_dir)
    sites.update_site(alice, pool["a1"].id, {"headers": {"X-Version": "5"}})
    rollout = deploy(alice, pool["a1"])
    assert rollout.status == DeploymentStatus.SUCCEEDED, rollout.error
    deployment = next(d for d in rollout.deployments if d.node_id == node.id)
    assert upload_step(deployment)["mode"] == "incremental"
    assert tree(node) == expected_tree(node)
    assert node.get("a1.example.com").headers["x-version"] == "5"


def test_files_are_readable_by_the_proxy_workers(fleet, pool):
    for node in fleet:
        live = Path(os.path.realpath(node.nginx.config_dir))
        assert oct(live.stat().st_mode & 0o777) == "0o755"
        for path in live.rglob("*"):
            mode = path.stat().st_mode & 0o777
            assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


def test_the_digest_the_node_computes_matches_ours(tmp_path):
    """The staging command's digest, run here by the same coreutils, over names that
    sort differently by bytes and by letters."""
    files = {"b.conf": b"two\n", "a/x.conf": b"one\n", "a.conf": b"", "B.conf": b"\xff"}
    for path, data in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(data)
    pipeline = ("find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum "
                "| sha256sum | cut -d' ' -f1")
    said = subprocess.run(["sh", "-c", pipeline], cwd=tmp_path, capture_output=True,
                          text=True, check=True).stdout.strip()
    assert manifest_digest({path: hashlib.sha256(data).hexdigest()
                            for path, data in files.items()}) == said
