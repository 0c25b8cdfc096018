"""A backup taken while a rollout runs on real nginx nodes is one moment of the
state: restored into a fresh PostgreSQL database by the command line, every row is
the backup's, every secret reads under the same key, and the restored instance
deploys to the same nodes over SSH with the node's restored key."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from flask import Flask
from sqlalchemy import select

from app.extensions import db, ssh
from app.models import Certificate, DeploymentStatus, Node, NotificationChannel, Rollout, User
from app.services import backup, deployments, sites, two_factor
from app.services.node_leases import node_lease
from app.services.notifiers import ChannelInput, channels
from tests import factories
from tests.backups import app_on, backup_rows, table_rows
from tests.backups import key as key  # noqa: F401  (fixture)
from tests.backups import source as source  # noqa: F401  (fixture)
from tests.components import app_env, flask_cli, postgres_database
from tests.conftest import _DATABASE_URL
from tests.fleet import Backends, FleetNode, register, start_fleet
from tests.sshd import SshServer

ADDRESSES = ("127.0.0.91", "127.0.0.92")
TELEGRAM_TOKEN = "654321:" + "C" * 35


@pytest.fixture()
def fleet(source: Flask, sshd: SshServer) -> Iterator[list[FleetNode]]:
    admin = factories.make_user("admin", "root")
    with ExitStack() as teardown:
        started = start_fleet(teardown, ADDRESSES)
        yield [register(admin, nginx, f"edge-{i}", sshd.port, sshd.client_key_text)
               for i, nginx in enumerate(started)]


def test_a_backup_taken_during_a_rollout_restores_into_postgresql_whole_and_working(
        source, key, fleet, backends: Backends, tmp_path):
    alice = factories.make_user("client", "alice")
    first, second = backends.start("first"), backends.start("second")
    shop = factories.make_site(alice, "shop.example.com",
                               backends=[{"host": "127.0.0.1", "port": first.port}])
    secure = factories.make_site(alice, "secure.example.com", ssl_mode="self_signed",
                                 backends=[{"host": "127.0.0.1", "port": first.port}])
    totp_secret = two_factor.begin_enrolment(alice).secret
    channel = channels.create_channel(alice, ChannelInput(
        name="phone", kind="telegram", target="4242", secret=TELEGRAM_TOKEN))
    deployed = deployments.wait(deployments.deploy_site(alice, shop.id).id, timeout=120)
    assert deployed.status == DeploymentStatus.SUCCEEDED, deployed.error
    node_keys = {n.id: n.ssh_private_key for n in db.session.scalars(select(Node))}
    cert = db.session.scalar(select(Certificate).where(Certificate.site_id == secure.id))
    assert cert is not None and cert.key_pem
    # Plain values only from here: a source row touched in the restored app's context
    # would be refreshed through that app's database.
    cert_id, cert_key, channel_id, shop_id = cert.id, cert.key_pem, channel.id, shop.id
    node_ids, first_port = [n.id for n in fleet], first.port

    # The next rollout starts and waits for the nodes, which the test holds.
    sites.update_site(alice, shop.id, {"backends": [{"host": "127.0.0.1",
                                                     "port": second.port}]})
    held = ExitStack()
    for node in fleet:
        held.enter_context(node_lease(node.id, ttl=source.config["DEPLOY_LOCK_TTL"], wait=0))
    running = deployments.deploy_site(alice, shop.id)
    finished: list[Rollout] = []

    def progress(table: str, rows: int) -> None:
        # The snapshot holds from the first table on: the rollout now takes the nodes
        # and finishes, writing versions, node deployments, sites and nodes, before
        # the backup reads the rollouts and their node deployments.
        if table == "config_versions":
            held.close()
            finished.append(deployments.wait(running.id, timeout=120))

    path = str(tmp_path / "during.tar")
    manifest = backup.write_backup_file(None, path, progress=progress)
    assert finished and finished[0].status == DeploymentStatus.SUCCEEDED, finished[0].error
    assert {n.get("shop.example.com").json()["backend"] for n in fleet} == {"second"}

    expected = backup_rows(path)
    in_backup = next(r for r in expected["rollouts"] if r["id"] == running.id)
    assert in_backup["status"] in ("pending", "running")  # as it was at the snapshot
    assert len(expected["config_versions"]) == len(fleet)  # the first rollout's only
    assert len(table_rows(_DATABASE_URL)["config_versions"]) == 2 * len(fleet)
    assert expected["node_locks"] == []  # held by the test then: a process's, not state
    assert manifest.keys == {backup.instance_key_fingerprints()[0]: manifest.secrets}

    with postgres_database("rpcc_restore", migrated=False) as url:
        output = flask_cli(app_env(url, ENCRYPTION_KEYS=key), "backup", "restore", path)
        assert "restored; the database is at schema revision" in output
        assert table_rows(url) == expected

        with app_on(url, key) as restored, restored.app_context():
            try:
                for node_id, ssh_key in node_keys.items():
                    node = db.session.get(Node, node_id)
                    assert node is not None and node.ssh_private_key == ssh_key
                again = db.session.get(Certificate, cert_id)
                assert again is not None and again.key_pem == cert_key
                user = db.session.scalar(select(User).where(User.username == "alice"))
                assert user is not None and user.totp_secret == totp_secret
                restored_channel = db.session.get(NotificationChannel, channel_id)
                assert restored_channel is not None
                assert restored_channel.secret == TELEGRAM_TOKEN

                # The restored instance reaches the nodes with their restored keys and
                # pinned host keys.  Its records end before the rollout that finished
                # during the backup, so it numbers that release again: deployed as it
                # stands, it finds the nodes already running it, under the same name.
                root = db.session.scalar(select(User).where(User.username == "root"))
                assert root is not None
                again_deployed = deployments.wait(
                    deployments.deploy_nodes(root, node_ids).id, timeout=120)
                assert again_deployed.status == DeploymentStatus.SUCCEEDED, \
                    again_deployed.error
                assert {n.get("shop.example.com").json()["backend"] for n in fleet} == {
                    "second"}
                # And it puts a change on them.
                sites.update_site(user, shop_id, {"backends": [{"host": "127.0.0.1",
                                                                "port": first_port}]})
                redeployed = deployments.wait(
                    deployments.deploy_nodes(root, node_ids).id, timeout=120)
                assert redeployed.status == DeploymentStatus.SUCCEEDED, redeployed.error
                assert {n.get("shop.example.com").json()["backend"] for n in fleet} == {
                    "first"}
            finally:
                ssh.reset(restored)
