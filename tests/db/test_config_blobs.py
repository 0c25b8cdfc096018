"""Config versions store each distinct file content once: versions keep manifests,
contents live (encrypted) in config_blobs, and every reader of versions works from
them, versions recorded before the change included."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.fernet import MultiFernet
from flask import Flask
from flask_migrate import downgrade, upgrade
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Integer,
    String,
    Text,
    column,
    create_engine,
    event,
    func,
    insert,
    inspect,
    make_url,
    select,
    table,
    text,
)
from sqlalchemy.pool import NullPool

from app.extensions import db as _db
from app.models import (
    ConfigBlob,
    ConfigVersion,
    DeploymentStatus,
    Node,
    NodeDeployment,
    Rollout,
    RolloutKind,
)
from app.services import deployments, sites
from app.services.deployments import blobs
from app.services.deployments.batch import RolloutPlan, _prepare
from app.services.deployments.blobs import content_hash, store_files
from app.services.deployments.history import last_taken, version_manifest
from tests import factories
from tests.conftest import make_app

PRIVATE_KEY = ("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIOnlyInTheVault\n"
               "-----END PRIVATE KEY-----\n")


def blob_count() -> int:
    return _db.session.scalar(select(func.count()).select_from(ConfigBlob))


def pool_files(sites: int, changed: int | None = None) -> dict[str, str]:
    """A node's files for a pool of ``sites`` sites, with site ``changed`` edited."""
    files = {"rpcc.conf": "include sites/*.conf;\n"}
    for n in range(sites):
        mark = " # edited" if n == changed else ""
        files[f"sites/site{n}.conf"] = f"server {{ server_name site{n}.example.com; }}{mark}\n"
        files[f"certs/site{n}/privkey.pem"] = PRIVATE_KEY.replace("Vault", f"Vault{n}")
    return files


def went_live(version: ConfigVersion, minute: int) -> None:
    """A successful deployment of ``version`` on its node, finished at ``minute``."""
    node = _db.session.get(Node, version.node_id)
    assert node is not None
    rollout = Rollout(kind=RolloutKind.DEPLOY, pool_id=node.pool_id,
                      status=DeploymentStatus.SUCCEEDED)
    _db.session.add(rollout)
    _db.session.flush()
    at = datetime(2026, 12, 1, 0, minute, tzinfo=UTC)
    _db.session.add(NodeDeployment(rollout_id=rollout.id, node_id=node.id, node_name=node.name,
                               config_version_id=version.id, status=DeploymentStatus.SUCCEEDED,
                               started_at=at, finished_at=at))
    _db.session.commit()


def rollback_job(app: Flask, admin: Any, node: Node, target: ConfigVersion) -> Any:
    """The job a rollback of ``node`` to ``target`` would run (nothing is sent)."""
    plan = RolloutPlan(id=0, kind=RolloutKind.ROLLBACK, site_id=None,
                       triggered_by_id=admin.id, target_version_id=target.id)
    recorder = SimpleNamespace(update=lambda *args, **values: None)
    prepared = _prepare(app, plan, [(1, node.id)], recorder, [], None)[1]  # type: ignore[arg-type]
    assert prepared.error is None, prepared.error
    return prepared.job


def test_two_versions_sharing_files_store_each_content_once(app, db):
    node = factories.make_node("edge-share")
    first = factories.make_version(node, {"rpcc.conf": "a\n", "sites/x.conf": "x\n",
                                          "sites/same.conf": "x\n"})
    assert blob_count() == 2  # two paths with one content are one blob
    second = factories.make_version(node, {"rpcc.conf": "b\n", "sites/x.conf": "x\n"})
    assert blob_count() == 3
    assert first.manifest["sites/x.conf"] == second.manifest["sites/x.conf"] == content_hash("x\n")
    assert deployments.version_files(first) == {"rpcc.conf": "a\n", "sites/x.conf": "x\n",
                                                "sites/same.conf": "x\n"}
    assert deployments.version_files(second) == {"rpcc.conf": "b\n", "sites/x.conf": "x\n"}


def test_a_one_site_change_in_a_large_pool_adds_only_the_changed_file(app, db):
    nodes = [factories.make_node(f"edge-pool{n}") for n in range(4)]
    for node in nodes:
        factories.make_version(node, pool_files(200))
    before = blob_count()
    assert before == 1 + 200 + 200  # the main file, and each site's conf and key, once
    manifests = store_files([pool_files(200, changed=17) for _ in nodes])
    assert blob_count() == before + 1
    assert len({json.dumps(m, sort_keys=True) for m in manifests}) == 1


def test_a_content_stored_by_a_racing_rollout_is_skipped(app, db, monkeypatch):
    """Two rollouts with the same new file: the one whose lookup ran before the other
    committed inserts it too, and that insert skips the row instead of failing."""
    store_files([{"a.conf": "new\n"}])
    _db.session.commit()
    monkeypatch.setattr(blobs, "_stored", lambda hashes: set())
    manifests = store_files([{"a.conf": "new\n"}, {"b.conf": "other\n"}])
    _db.session.commit()
    assert blob_count() == 2
    assert manifests == [{"a.conf": content_hash("new\n")}, {"b.conf": content_hash("other\n")}]


def test_private_keys_stay_encrypted_at_rest(app, db):
    node = factories.make_node("edge-secret")
    version = factories.make_version(node, {"certs/x/privkey.pem": PRIVATE_KEY})
    raw = " ".join(_db.session.execute(text("SELECT content FROM config_blobs")).scalars())
    manifest = _db.session.execute(
        text("SELECT manifest FROM config_versions WHERE id = :id"), {"id": version.id}).scalar()
    assert "OnlyInTheVault" not in raw and "PRIVATE KEY" not in raw
    assert "PRIVATE KEY" not in str(manifest)
    assert deployments.version_files(version, keys=True)["certs/x/privkey.pem"] == PRIVATE_KEY
    assert deployments.version_files(version)["certs/x/privkey.pem"] == deployments.MASKED_KEY


def test_diff_and_rollback_between_any_two_versions(app, db, admin):
    node = factories.make_node("edge-hist")
    versions = [factories.make_version(node, pool_files(20, changed=n)) for n in (1, 2, 3)]
    for minute, version in enumerate(versions):
        went_live(version, minute)
    diff = deployments.diff_versions(admin, node.id, versions[0].id, versions[2].id)
    assert "-server { server_name site1.example.com; } # edited" in diff
    assert "+server { server_name site3.example.com; } # edited" in diff
    assert "site2" not in diff and "OnlyInTheVault" not in diff
    assert deployments.diff_versions(admin, node.id, versions[1].id, versions[1].id) == ""
    assert deployments.current_version(node.id).id == versions[2].id
    blobs = blob_count()
    job = rollback_job(app, admin, node, versions[0])
    assert job.files == pool_files(20, 1)
    assert job.manifest == {path: content_hash(text) for path, text in job.files.items()}
    assert job.base_manifest == {path: content_hash(text)
                                 for path, text in pool_files(20, 3).items()}
    recorded = _db.session.scalar(select(ConfigVersion).where(ConfigVersion.node_id == node.id)
                                  .order_by(ConfigVersion.version.desc()).limit(1))
    assert recorded.version == 4
    assert version_manifest(recorded) == version_manifest(versions[0])
    assert blob_count() == blobs  # a rollback stores nothing new


def test_what_nodes_last_took_is_read_from_manifests_alone(app, db):
    """A rollout compares with the nodes' last versions by hash: two queries for the
    whole batch, and no file content read or decrypted."""
    nodes = [factories.make_node(f"edge-taken{n}") for n in range(3)]
    for minute, node in enumerate(nodes):
        went_live(factories.make_version(node, pool_files(5)), minute)
    node_ids = [node.id for node in nodes]
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(_db.engine, "before_cursor_execute", count)
    try:
        taken = last_taken(node_ids, with_manifests=True)
    finally:
        event.remove(_db.engine, "before_cursor_execute", count)
    # The versions taken, then their manifests (whole ones: no base to read).
    assert len(statements) == 2, statements
    assert not any("config_blobs" in statement for statement in statements)
    expected = {path: content_hash(text) for path, text in pool_files(5).items()}
    assert [taken[node_id][1] for node_id in node_ids] == [expected] * 3


def test_a_one_site_change_asks_the_database_about_that_sites_files_alone(
        app, db, admin, monkeypatch):
    """Contents the node's last version names are stored already (blobs are only ever
    added): recording the next version looks up only the files that differ, not every
    file of the pool."""
    node = factories.make_node("edge-asks")
    admin.max_sites = 50
    pool = [factories.make_site(admin, f"asks{n:02d}.example.org") for n in range(30)]
    recorder = SimpleNamespace(update=lambda *args, **values: None)
    plan = RolloutPlan(id=0, kind=RolloutKind.DEPLOY, site_id=pool[7].id,
                       triggered_by_id=admin.id, target_version_id=None)
    first = _prepare(app, plan, [(1, node.id)], recorder, [], None)[1]  # type: ignore[arg-type]
    assert first.job is not None, first.error
    version = _db.session.get(ConfigVersion, last_version_id(node.id))
    went_live(version, 0)
    asked: list[str] = []
    lookup = blobs._stored

    def spying(hashes: list[str]) -> set[str]:
        asked.extend(hashes)
        return lookup(hashes)

    monkeypatch.setattr(blobs, "_stored", spying)
    sites.update_site(admin, pool[7].id, {"headers": {"X-Changed": "yes"}})
    second = _prepare(app, plan, [(2, node.id)], recorder, [], None)[2]  # type: ignore[arg-type]
    assert second.job is not None, second.error
    changed = {path for path, digest in second.job.manifest.items()
               if first.job.manifest.get(path) != digest}
    assert changed == {"sites/asks07.example.org.conf", "probe.conf"}
    assert sorted(asked) == sorted(second.job.manifest[path] for path in changed)
    assert len(first.job.manifest) > 30


def last_version_id(node_id: int) -> int:
    return _db.session.scalar(select(func.max(ConfigVersion.id))
                              .where(ConfigVersion.node_id == node_id))


# -- versions recorded before content addressing --------------------------------------


@pytest.fixture()
def old_database(app: Flask) -> Iterator[str]:
    """An empty database of the session's kind, for a migration test of its own."""
    url = make_url(app.config["SQLALCHEMY_DATABASE_URI"])
    if url.get_backend_name() != "postgresql":
        directory = tempfile.mkdtemp(prefix="rpcc-blobs-")
        try:
            yield f"sqlite:///{os.path.join(directory, 'app.db')}"
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        return
    name = f"rpcc_blobs_{uuid.uuid4().hex[:12]}"
    server = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with server.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with server.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()


NOW = datetime(2026, 12, 1, tzinfo=UTC)
# The tables as revision 0009 left them (the columns written here).
OLD_POOLS = table("pools", column("id", Integer), column("name", String),
                  column("description", Text), column("created_at", DateTime(timezone=True)),
                  column("updated_at", DateTime(timezone=True)))
OLD_NODES = table("nodes", *(column(name, kind) for name, kind in (
    ("id", Integer), ("name", String), ("host", String), ("ssh_port", Integer),
    ("ssh_user", String), ("proxy_type", String), ("pool_id", Integer),
    ("config_dir", String), ("test_command", String), ("reload_command", String),
    ("http_port", Integer), ("https_port", Integer), ("enabled", Boolean),
    ("status", String), ("is_discovered", Boolean), ("created_at", DateTime(timezone=True)),
    ("updated_at", DateTime(timezone=True)))))
OLD_VERSIONS = table("config_versions", *(column(name, kind) for name, kind in (
    ("id", Integer), ("node_id", Integer), ("version", Integer), ("files", Text),
    ("sha256", String), ("site_versions", JSON), ("file_count", Integer),
    ("created_at", DateTime(timezone=True)))))
OLD_ROLLOUTS = table("rollouts", column("id", Integer), column("kind", String),
                     column("status", String), column("error", Text),
                     column("created_at", DateTime(timezone=True)))
OLD_DEPLOYMENTS = table("deployments", *(column(name, kind) for name, kind in (
    ("id", Integer), ("rollout_id", Integer), ("node_id", Integer), ("node_name", String),
    ("config_version_id", Integer), ("status", String), ("step", String), ("steps", JSON),
    ("error", Text), ("started_at", DateTime(timezone=True)),
    ("finished_at", DateTime(timezone=True)))))


def insert_row(old_table: Any, **values: Any) -> int:
    return _db.session.execute(
        insert(old_table).values(**values).returning(old_table.c.id)).scalar_one()


def insert_old_node() -> int:
    pool_id = insert_row(OLD_POOLS, name="legacy", description="", created_at=NOW,
                         updated_at=NOW)
    return insert_row(OLD_NODES, name="edge-old", host="127.0.0.9", ssh_port=22,
                      ssh_user="root", proxy_type="nginx", pool_id=pool_id,
                      config_dir="/etc/nginx/rpcc", test_command="nginx -t",
                      reload_command="nginx -s reload", http_port=80, https_port=443,
                      enabled=True, status="unknown", is_discovered=False, created_at=NOW,
                      updated_at=NOW)


def insert_old_version(node_id: int, number: int, files: dict[str, str], keys: MultiFernet,
                       minute: int) -> int:
    """A version as revision 0009 stored it (every file, as encrypted JSON), deployed
    successfully at ``minute``."""
    version_id = insert_row(
        OLD_VERSIONS, node_id=node_id, version=number, sha256=deployments.files_digest(files),
        files=keys.encrypt(json.dumps(files).encode()).decode(),
        site_versions={"1": number}, file_count=len(files), created_at=NOW)
    rollout_id = insert_row(OLD_ROLLOUTS, kind="deploy", status="succeeded", error="",
                            created_at=NOW)
    at = datetime(2026, 12, 1, 0, minute, tzinfo=UTC)
    insert_row(OLD_DEPLOYMENTS, rollout_id=rollout_id, node_id=node_id, node_name="edge-old",
               config_version_id=version_id, status="succeeded", step="", steps=[],
               error="", started_at=at, finished_at=at)
    return version_id


def test_versions_recorded_before_the_migration_still_diff_and_roll_back(app, old_database):
    migrated = make_app(SQLALCHEMY_DATABASE_URI=old_database)
    keys = app.extensions["rpcc_fernet"]
    migrated.extensions["rpcc_fernet"] = keys
    v1 = {"rpcc.conf": "include sites/*.conf;\n", "sites/a.conf": "server a;\n",
          "certs/a/privkey.pem": PRIVATE_KEY}
    v2 = {**v1, "sites/a.conf": "server a2;\n", "sites/b.conf": "server b;\n"}
    with migrated.app_context():
        try:
            upgrade(revision="0009")
            node_id = insert_old_node()
            old_id = insert_old_version(node_id, 1, v1, keys, minute=0)
            new_id = insert_old_version(node_id, 2, v2, keys, minute=1)
            _db.session.commit()

            upgrade()
            columns = {c["name"] for c in inspect(_db.engine).get_columns("config_versions")}
            assert "files" not in columns and "manifest" in columns
            assert blob_count() == 5  # four contents of v1, two new ones in v2, one shared
            raw = " ".join(_db.session.execute(
                text("SELECT content FROM config_blobs")).scalars())
            assert "OnlyInTheVault" not in raw

            admin = factories.make_user("admin", "admin-old")
            node = _db.session.get(Node, node_id)
            old, new = (_db.session.get(ConfigVersion, i) for i in (old_id, new_id))
            assert deployments.version_files(old, keys=True) == v1
            assert deployments.version_files(new)["certs/a/privkey.pem"] == deployments.MASKED_KEY
            diff = deployments.diff_versions(admin, node_id, old_id, new_id)
            assert "-server a;" in diff and "+server a2;" in diff and "+server b;" in diff
            assert "OnlyInTheVault" not in diff
            assert deployments.current_version(node_id).id == new_id
            assert deployments.rollback_summary(new, old) == (
                "From v2 to v1: 1 site goes back to an earlier configuration.")
            job = rollback_job(migrated, admin, node, old)
            assert job.files == v1
            assert job.base_manifest == {path: content_hash(text) for path, text in v2.items()}
            _db.session.commit()

            downgrade(revision="0009")
            rows = dict(_db.session.execute(text(
                "SELECT version, files FROM config_versions ORDER BY version")).all())
            assert {number: json.loads(keys.decrypt(token.encode()))
                    for number, token in rows.items()} == {1: v1, 2: v2, 3: v1}
            _db.session.commit()
        finally:
            _db.session.remove()
            for engine in _db.engines.values():
                engine.dispose()
