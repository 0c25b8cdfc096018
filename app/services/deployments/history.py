"""The versions a node took: their files (private keys withheld unless a deployment
needs them), which one is live, what rolling back to one does, and diffs between
two.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Collection, Mapping
from typing import Any, NamedTuple

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
# A version keeps its whole manifest at least every this many versions of a chain,
# which bounds what reading one costs.
WHOLE_EVERY = 16


def version_files(version: ConfigVersion, *, keys: bool = False) -> dict[str, str]:
    """A version's files, private keys withheld unless ``keys``: pages, the API and
    diffs show versions to people, and only a deployment or a drift check needs a
    key itself.  Masking here means no caller can forget it."""
    files = manifest_files([version_manifest(version)])[0]
    return files if keys else _masked(files)


def version_manifest(version: ConfigVersion) -> dict[str, str]:
    """The whole manifest of a version, whatever its record keeps."""
    return resolved_manifests([version.id])[version.id]


def resolved_manifests(version_ids: Collection[int]) -> dict[int, dict[str, str]]:
    """{version id: its whole manifest}: each recorded delta applied on its base,
    reading the chains level by level (a query per level, at most
    :data:`WHOLE_EVERY`), each base once for every version built on it."""
    records: dict[int, tuple[int | None, dict[str, str | None]]] = {}
    wanted = set(version_ids)
    while wanted:
        for version_id, base_id, manifest in db.session.execute(
                select(ConfigVersion.id, ConfigVersion.base_id, ConfigVersion.manifest)
                .where(ConfigVersion.id.in_(wanted))):
            records[version_id] = (base_id, manifest)
        missing = wanted - set(records)
        if missing:
            raise NotFound(f"config version {min(missing)} is not recorded")
        wanted = {base_id for base_id, _ in records.values()
                  if base_id is not None and base_id not in records}
    whole: dict[int, dict[str, str]] = {}

    def resolve(version_id: int) -> dict[str, str]:
        if version_id not in whole:
            base_id, manifest = records[version_id]
            result = dict(resolve(base_id)) if base_id is not None else {}
            for path, digest in manifest.items():
                if digest is None:
                    result.pop(path, None)
                else:
                    result[path] = digest
            whole[version_id] = result
        return whole[version_id]

    return {version_id: resolve(version_id) for version_id in version_ids}


class Taken(NamedTuple):
    """What a node last took successfully."""

    site_versions: dict[str, int]
    manifest: dict[str, str] | None
    release: str
    version_id: int
    depth: int


def recorded_manifest(manifest: Mapping[str, str], base: Taken | None) -> dict[str, Any]:
    """The columns recording ``manifest``: what differs from ``base`` (the version
    the node last took) when that is small, else the whole manifest."""
    if base is None or base.manifest is None or base.depth + 1 >= WHOLE_EVERY:
        return {"manifest": dict(manifest), "base_id": None, "depth": 0}
    delta: dict[str, str | None] = {path: digest for path, digest in manifest.items()
                                    if base.manifest.get(path) != digest}
    delta.update((path, None) for path in base.manifest if path not in manifest)
    if 2 * len(delta) > len(manifest):
        return {"manifest": dict(manifest), "base_id": None, "depth": 0}
    return {"manifest": delta, "base_id": base.version_id, "depth": base.depth + 1}


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


def last_taken(node_ids: list[int], *, with_manifests: bool) -> dict[int, Taken]:
    """Per node, what it last took successfully: site versions, the whole manifest of
    its files if asked (what a deployment compares with, without reading a file),
    the name of the release directory that version went to, and the version."""
    if not node_ids:
        return {}
    latest = latest_deployments(node_ids, [DeploymentStatus.SUCCEEDED])
    rows = db.session.execute(
        select(latest.c.node_id, ConfigVersion.site_versions, ConfigVersion.version,
               ConfigVersion.sha256, ConfigVersion.id, ConfigVersion.depth)
        .join(ConfigVersion, ConfigVersion.id == latest.c.config_version_id)
        .where(latest.c.rank == 1)).all()
    manifests = (resolved_manifests([row[4] for row in rows]) if with_manifests else {})
    return {row[0]: Taken(dict(row[1] or {}), manifests.get(row[4]),
                          release_name(row[2], row[3]), row[4], row[5])
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
    resolved = resolved_manifests([v.id for v in versions])
    old_manifest, new_manifest = (resolved[v.id] for v in versions)
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
