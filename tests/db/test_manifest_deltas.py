"""A version records what changed since the node's last version: a one-site change in
a big pool costs a few manifest entries per node, every version still reads as its
whole manifest, and the chains stay short."""

from __future__ import annotations

import json
from types import SimpleNamespace

from flask import Flask
from flask_migrate import downgrade, upgrade
from sqlalchemy import select, text

from app.extensions import db as _db
from app.models import ConfigVersion, DeploymentStatus, Node, NodeDeployment, Rollout, RolloutKind
from app.models.base import utcnow
from app.services import deployments, sites
from app.services.deployments.batch import RolloutPlan, _prepare
from app.services.deployments.history import (
    recorded_manifest,
    resolved_manifests,
    version_manifest,
)
from tests import factories
from tests.conftest import make_app
from tests.db.test_config_blobs import old_database  # noqa: F401  (a fixture)


def deploy_without_nodes(app: Flask, node: Node, site_id: int) -> ConfigVersion:
    """What a rollout records for ``node`` (rendered and stored; nothing is sent),
    then marked as taken, as a successful deployment leaves it."""
    rollout = Rollout(kind=RolloutKind.DEPLOY, site_id=site_id, pool_id=node.pool_id,
                      status=DeploymentStatus.RUNNING)
    _db.session.add(rollout)
    _db.session.flush()
    row = NodeDeployment(rollout_id=rollout.id, node_id=node.id, node_name=node.name)
    _db.session.add(row)
    _db.session.commit()
    plan = RolloutPlan(id=rollout.id, kind=RolloutKind.DEPLOY, site_id=site_id,
                       triggered_by_id=None, target_version_id=None)
    recorder = SimpleNamespace(update=lambda *args, **values: None)
    prepared = _prepare(app, plan, [(row.id, node.id)], recorder,  # type: ignore[arg-type]
                        [], None)[row.id]
    assert prepared.error is None, prepared.error
    version = _db.session.scalar(select(ConfigVersion).where(ConfigVersion.node_id == node.id)
                                 .order_by(ConfigVersion.version.desc()).limit(1))
    row = _db.session.get(NodeDeployment, row.id)
    row.status, row.finished_at, row.config_version_id = (DeploymentStatus.SUCCEEDED,
                                                          utcnow(), version.id)
    _db.session.commit()
    return version


def test_a_one_site_change_records_only_what_it_changed(app, db, admin):
    admin.max_sites = 100
    _db.session.commit()
    node = factories.make_node("edge-delta")
    made = [factories.make_site(admin, f"delta{n}.example.org") for n in range(40)]
    first = deploy_without_nodes(app, node, made[0].id)
    assert first.base_id is None and len(first.manifest) == first.file_count
    sites.update_site(admin, made[7].id, {"headers": {"X-Changed": "yes"}})
    second = deploy_without_nodes(app, node, made[7].id)
    assert second.base_id == first.id and second.depth == 1
    # The site's own file and the probe, whose token names the configuration.
    assert len(second.manifest) == 2, second.manifest
    whole = version_manifest(second)
    assert len(whole) == second.file_count
    files = deployments.version_files(second, keys=True)
    assert any("X-Changed" in text for text in files.values())
    sites.delete_site(admin, made[9].id)
    third = deploy_without_nodes(app, node, made[0].id)
    removed = [path for path, digest in third.manifest.items() if digest is None]
    assert removed and all("delta9" in path for path in removed)
    assert not set(removed) & set(version_manifest(third))


def test_chains_resolve_through_the_database(app, db):
    node = factories.make_node("edge-chain")
    previous = None
    expected = {}
    ids = []
    manifest = {f"f{n}": f"{n:064x}" for n in range(6)}
    for number in range(1, 6):
        manifest = {**manifest, f"f{number}": f"{number + 50:064x}"}
        taken = (SimpleNamespace(manifest=previous[1], version_id=previous[0],
                                 depth=previous[2]) if previous else None)
        columns = recorded_manifest(manifest, taken)
        version = ConfigVersion(node_id=node.id, version=number, sha256="0" * 64,
                                site_versions={}, file_count=len(manifest), **columns)
        _db.session.add(version)
        _db.session.flush()
        ids.append(version.id)
        expected[version.id] = dict(manifest)
        previous = (version.id, dict(manifest), columns["depth"])
    _db.session.commit()
    assert resolved_manifests(ids) == expected


def test_the_downgrade_gives_every_version_its_whole_manifest(app, admin,
                                                               old_database):  # noqa: F811
    migrated = make_app(SQLALCHEMY_DATABASE_URI=old_database)
    migrated.extensions["rpcc_fernet"] = app.extensions["rpcc_fernet"]
    with migrated.app_context():
        try:
            upgrade()
            owner = factories.make_user("admin", "admin-deltas")
            owner.max_sites = 50
            _db.session.commit()
            node = factories.make_node("edge-downgrade")
            made = [factories.make_site(owner, f"down{n}.example.org") for n in range(20)]
            versions = [deploy_without_nodes(migrated, node, made[0].id)]
            for n in (3, 4):
                sites.update_site(owner, made[n].id, {"headers": {"X-N": str(n)}})
                versions.append(deploy_without_nodes(migrated, node, made[n].id))
            assert [v.depth for v in versions] == [0, 1, 2]
            whole = resolved_manifests([v.id for v in versions])
            _db.session.commit()
            downgrade(revision="0011")
            rows = dict(_db.session.execute(text(
                "SELECT id, manifest FROM config_versions")).all())
            assert {version_id: (manifest if isinstance(manifest, dict)
                                 else json.loads(manifest))
                    for version_id, manifest in rows.items()} == whole
            _db.session.commit()
            upgrade()
        finally:
            _db.session.remove()
            for engine in _db.engines.values():
                engine.dispose()
