"""The versions a node took: their files (private keys withheld unless a deployment
needs them), which one is live, what rolling back to one does, and diffs between
two.
"""

from __future__ import annotations

import difflib
import logging
from typing import Any

from sqlalchemy import func, select

from app.errors import NotFound
from app.extensions import db
from app.models import (
    ConfigVersion,
    DeploymentStatus,
    Node,
    NodeDeployment,
    User,
)
from app.services.common import Page, get_or_404, paginate, require_admin
from app.services.deployments.blobs import load_contents, manifest_files
from app.services.deployments.release import release_name

logger = logging.getLogger(__name__)

PRIVATE_KEY_MARK = "PRIVATE KEY-----"
MASKED_KEY = "# private key withheld\n"


def version_files(version: ConfigVersion, *, keys: bool = False) -> dict[str, str]:
    """A version's files, private keys withheld unless ``keys``: pages, the API and
    diffs show versions to people, and only a deployment or a drift check needs a
    key itself.  Masking here means no caller can forget it."""
    files = manifest_files([version.manifest])[0]
    return files if keys else _masked(files)


def _masked(files: dict[str, str]) -> dict[str, str]:
    return {path: (MASKED_KEY if PRIVATE_KEY_MARK in text else text)
            for path, text in files.items()}


def current_version(node_id: int) -> ConfigVersion | None:
    """The version the node last took successfully (what drift is measured against)."""
    stmt = (select(ConfigVersion)
            .join(NodeDeployment, NodeDeployment.config_version_id == ConfigVersion.id)
            .where(NodeDeployment.node_id == node_id,
                   NodeDeployment.status == DeploymentStatus.SUCCEEDED)
            .order_by(NodeDeployment.finished_at.desc(), NodeDeployment.id.desc()).limit(1))
    return db.session.scalar(stmt)


def rollback_summary(current: ConfigVersion | None, target: ConfigVersion) -> str:
    """What rolling back from ``current`` to ``target`` does to the node's sites, in
    words for the confirmation (from the versions' site map: no file is decrypted)."""
    if current is None:
        return f"The node gets v{target.version} ({target.file_count} files)."
    now, then = current.site_versions or {}, target.site_versions or {}
    removed = len(set(now) - set(then))
    added = len(set(then) - set(now))
    changed = sum(1 for site, version in then.items() if site in now and now[site] != version)
    parts = [f"1 site {one}" if count == 1 else f"{count} sites {many}"
             for count, one, many in (
                 (changed, "goes back to an earlier configuration",
                  "go back to an earlier configuration"),
                 (removed, "stops being served", "stop being served"),
                 (added, "comes back", "come back")) if count]
    return (f"From v{current.version} to v{target.version}: "
            + ("; ".join(parts) if parts else "no site changes (shared files only)") + ".")


def latest_deployments(node_ids: list[int], statuses: list[DeploymentStatus], *,
                        by_id: bool = False) -> Any:
    """The latest deployment of each node (by finish, or by creation) among those
    with these statuses, ranked 1 in a subquery: one query for a whole pool."""
    order = ((NodeDeployment.id.desc(),) if by_id
             else (NodeDeployment.finished_at.desc(), NodeDeployment.id.desc()))
    rank = func.row_number().over(partition_by=NodeDeployment.node_id, order_by=order)
    return (select(NodeDeployment.node_id, NodeDeployment.status, NodeDeployment.error,
                   NodeDeployment.config_version_id, rank.label("rank"))
            .where(NodeDeployment.node_id.in_(node_ids), NodeDeployment.status.in_(statuses))
            .subquery())


def carried_versions(node_ids: list[int]) -> dict[int, dict[str, int]]:
    """Per node, the site versions of what it last took successfully."""
    return {node_id: taken[0] for node_id, taken in
            last_taken(node_ids, with_manifests=False).items()}


def last_taken(node_ids: list[int], *, with_manifests: bool
               ) -> dict[int, tuple[dict[str, int], dict[str, str] | None, str]]:
    """Per node, what it last took successfully: site versions, the manifest of its
    files if asked (what a deployment compares with, without reading a file), and
    the name of the release directory that version went to."""
    if not node_ids:
        return {}
    latest = latest_deployments(node_ids, [DeploymentStatus.SUCCEEDED])
    columns = [latest.c.node_id, ConfigVersion.site_versions, ConfigVersion.version,
               ConfigVersion.sha256]
    if with_manifests:
        columns.append(ConfigVersion.manifest)
    rows = db.session.execute(
        select(*columns).join(ConfigVersion, ConfigVersion.id == latest.c.config_version_id)
        .where(latest.c.rank == 1)).all()
    return {row[0]: (dict(row[1] or {}), dict(row[4]) if with_manifests else None,
                     release_name(row[2], row[3]))
            for row in rows}


def list_versions(actor: User, node_id: int, *, page: int = 1,
                  per_page: int = 50) -> Page[ConfigVersion]:
    require_admin(actor)
    get_or_404(Node, node_id, "node")
    stmt = select(ConfigVersion).where(ConfigVersion.node_id == node_id)
    return paginate(stmt.order_by(ConfigVersion.version.desc()), page, per_page)


def get_version(actor: User, node_id: int, version_id: int) -> ConfigVersion:
    require_admin(actor)
    version = db.session.get(ConfigVersion, version_id)
    if version is None or version.node_id != node_id:
        raise NotFound("version not found")
    return version


def get_version_number(actor: User, node_id: int, number: int) -> ConfigVersion:
    """A node's version by its number (as ``nodes versions`` lists them)."""
    require_admin(actor)
    version = db.session.scalar(select(ConfigVersion).where(
        ConfigVersion.node_id == node_id, ConfigVersion.version == number))
    if version is None:
        raise NotFound(f"the node has no version {number}")
    return version


def version_statuses(version_ids: list[int]) -> dict[int, str]:
    """The outcome of each version's deployment, for the history page."""
    rows = db.session.execute(select(NodeDeployment.config_version_id, NodeDeployment.status)
                              .where(NodeDeployment.config_version_id.in_(version_ids)))
    return {vid: status.value for vid, status in rows if vid is not None}


def diff_versions(actor: User, node_id: int, old_id: int, new_id: int) -> str:
    """A unified diff of two versions of one node (private keys withheld).  Only the
    files whose content differs are read and decrypted."""
    require_admin(actor)
    versions = [get_version(actor, node_id, version_id) for version_id in (old_id, new_id)]
    old_manifest, new_manifest = (v.manifest for v in versions)
    paths = sorted(path for path in set(old_manifest) | set(new_manifest)
                   if old_manifest.get(path) != new_manifest.get(path))
    contents = load_contents({manifest[path] for manifest in (old_manifest, new_manifest)
                              for path in paths if path in manifest})
    old, new = (_masked({path: contents[manifest[path]] for path in paths if path in manifest})
                for manifest in (old_manifest, new_manifest))
    chunks: list[str] = []
    for path in paths:
        chunks.extend(difflib.unified_diff(
            old.get(path, "").splitlines(keepends=True),
            new.get(path, "").splitlines(keepends=True),
            fromfile=f"v{versions[0].version}/{path}", tofile=f"v{versions[1].version}/{path}"))
    return "".join(chunks)
