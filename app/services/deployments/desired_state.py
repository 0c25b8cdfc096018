"""What a node should run: the files of every site of its pool, rendered by the
node's engine, with the probe that proves them live.  Read once per pool for a whole
batch of nodes; each node still gets its own rendering.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from app.connector import (
    SSHTarget,
)
from app.engines import get_engine
from app.engines.base import NodeSpec, SiteSpec
from app.extensions import db
from app.models import (
    Certificate,
    Node,
    NodeStatus,
    Site,
)
from app.services import rendering, set_aside
from app.services.deployments.blobs import content_hash
from app.services.deployments.release import manifest_digest

logger = logging.getLogger(__name__)

def ssh_target(node: Node) -> SSHTarget:
    return SSHTarget(node_id=node.id, host=node.host, port=node.ssh_port,
                     username=node.ssh_user, private_key=node.ssh_private_key,
                     password=node.ssh_password, host_key=node.host_key)


def active_nodes(pool_id: int) -> list[Node]:
    """Nodes that receive deployments: enabled and not draining."""
    stmt = (select(Node).where(Node.pool_id == pool_id, Node.enabled.is_(True),
                               Node.status != NodeStatus.DRAINING).order_by(Node.name))
    return list(db.session.scalars(stmt))


def pool_sites(pool_id: int, site_ids: Collection[int] | None = None) -> list[Site]:
    stmt = (select(Site).where(Site.pool_id == pool_id)
            .options(selectinload(Site.hostnames), selectinload(Site.backends),
                     selectinload(Site.basic_auth_users), selectinload(Site.certificate))
            .order_by(Site.domain))
    if site_ids is not None:
        stmt = stmt.where(Site.id.in_(site_ids))
    return list(db.session.scalars(stmt))


# What identifies one rendering of a site: its id, its config version, and when its row
# and its certificate's row last changed (a stored certificate, or any write that did
# not bump the version, still gives a new key; so does a fresh database reusing ids).
SpecKey = tuple[int, int, Any, Any]


class SpecCache:
    """Site specs kept between rollouts, so that a rollout reads each pool's sites as a
    few columns and builds specs only for the sites that changed: the cost of a
    one-site change stays that of one site, however many the pool holds.  Bounded;
    shared by the threads of one process."""

    def __init__(self, limit: int = 50_000) -> None:
        self.limit = limit
        self._specs: OrderedDict[int, tuple[SpecKey, SiteSpec]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: SpecKey) -> SiteSpec | None:
        with self._lock:
            held = self._specs.get(key[0])
            if held is None or held[0] != key:
                return None
            self._specs.move_to_end(key[0])
            return held[1]

    def put(self, key: SpecKey, spec: SiteSpec) -> None:
        with self._lock:
            self._specs[key[0]] = (key, spec)
            self._specs.move_to_end(key[0])
            while len(self._specs) > self.limit:
                self._specs.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._specs.clear()


SPECS = SpecCache()


@dataclass(frozen=True)
class PoolState:
    """A pool's sites as the engines take them, read once for every node of a
    rollout's batch (each node still gets its own rendering).

    ``accepted`` holds, for the sites whose last version the nodes took is not their
    current one, that version's settings (JSON) and number: what a node renders for
    such a site when it is set aside (``None`` settings: it never had one, and is
    left out).  ``refused`` names the sites whose current version a node refused:
    other tenants' rollouts set them aside from the start."""

    specs: list[SiteSpec]
    versions: dict[str, int]
    domains: dict[int, str]
    accepted: dict[int, tuple[dict[str, Any] | None, int | None]]
    refused: frozenset[int]

    @classmethod
    def load(cls, pool_id: int) -> PoolState:
        rows = db.session.execute(
            select(Site.id, Site.domain, Site.config_version, Site.updated_at,
                   Certificate.updated_at, Site.accepted_version, Site.refused_version)
            .outerjoin(Certificate, Certificate.site_id == Site.id)
            .where(Site.pool_id == pool_id).order_by(Site.domain)).all()
        keys = {row[0]: (row[0], row[2], row[3], row[4]) for row in rows}
        cached = {site_id: SPECS.get(key) for site_id, key in keys.items()}
        missing = [site_id for site_id, spec in cached.items() if spec is None]
        if missing:
            for site in pool_sites(pool_id, missing):
                spec = rendering.site_spec(site)
                key = (site.id, site.config_version, site.updated_at,
                       site.certificate.updated_at if site.certificate else None)
                SPECS.put(key, spec)
                if key == keys.get(site.id):
                    cached[site.id] = spec
        specs = []
        for row in rows:
            found = cached.get(row[0])
            if found is None:  # changed between the two reads: the newer read wins
                current = db.session.get(Site, row[0])
                if current is None:
                    continue
                found = rendering.site_spec(current)
            specs.append(found)
        stale = [row[0] for row in rows if row[5] != row[2]]
        accepted: dict[int, tuple[dict[str, Any] | None, int | None]] = {}
        if stale:
            accepted = {row[0]: (row[1], row[2]) for row in db.session.execute(
                select(Site.id, Site.accepted_spec, Site.accepted_version)
                .where(Site.id.in_(stale)))}
        return cls(specs=specs,
                   versions={str(spec.id): spec.config_version for spec in specs},
                   domains={row[0]: row[1] for row in rows},
                   accepted=accepted,
                   refused=frozenset(row[0] for row in rows if row[6] == row[2]))

    def with_aside(self, aside: Collection[int]) -> tuple[list[SiteSpec], dict[str, int]]:
        """The specs and versions with the sites in ``aside`` at their accepted
        version, or left out when they have none."""
        if not aside:
            return self.specs, self.versions
        specs, versions = [], dict(self.versions)
        for spec in self.specs:
            if spec.id not in aside:
                specs.append(spec)
                continue
            if spec.id not in self.accepted:  # the nodes took its current version
                specs.append(spec)
                continue
            data, version = self.accepted[spec.id]
            if data is None or version is None:
                versions.pop(str(spec.id), None)
                continue
            specs.append(set_aside.spec_from_json(data, spec.certificate))
            versions[str(spec.id)] = version
        return specs, versions


@dataclass(frozen=True)
class NodeRender:
    """One node's files, their manifest ({path: SHA-256}), the site versions they
    carry, and which files are whose."""

    files: dict[str, str]
    manifest: dict[str, str]
    versions: dict[str, int]
    site_files: dict[int, list[str]]


def render_node(node: NodeSpec, engine_name: str, state: PoolState,
                aside: Collection[int] = ()) -> NodeRender:
    """The node's files, with the engine's probe.  Each file is hashed once, here or
    by the engine in an earlier rendering for the node: the manifest serves the
    probe's token, the stored version, the digest the node checks and the choice of
    what to send."""
    engine = get_engine(engine_name)
    specs, versions = state.with_aside(aside)
    rendered = engine.render(node, specs)
    files = rendered.files
    known = rendered.digests
    manifest = {path: known.get(path) or content_hash(text) for path, text in files.items()}
    probe = engine.probe(node, token_of(manifest))
    files.update(probe)
    manifest.update(manifest_of(probe))
    return NodeRender(files, manifest, versions, rendered.site_files)


def manifest_of(files: Mapping[str, str]) -> dict[str, str]:
    return {path: content_hash(text) for path, text in files.items()}


def token_of(manifest: Mapping[str, str]) -> str:
    """What the probe answers: a digest of the configuration it ships with, so that
    the same configuration always carries the same token (and a rollback's files
    still name theirs)."""
    return manifest_digest(manifest)[:32]


def probe_token(files: Mapping[str, str]) -> str:
    """:func:`token_of` the files themselves."""
    return token_of(manifest_of(files))


def expected_probe(node: Node, manifest: Mapping[str, str]) -> str | None:
    """The token a node answers once it runs the files of ``manifest``; None for
    engines without a probe (their reload returns when the configuration is live)."""
    return probe_for(rendering.node_spec(node), node.proxy_type.value, manifest)


def probe_for(spec: NodeSpec, engine_name: str, manifest: Mapping[str, str]) -> str | None:
    engine = get_engine(engine_name)
    names = set(engine.probe(spec, "-"))
    if not names or not names <= set(manifest):
        return None
    return token_of({path: digest for path, digest in manifest.items() if path not in names})


def files_digest(files: Mapping[str, str]) -> str:
    """The digest a version records of its files (the one the node computes)."""
    return manifest_digest(manifest_of(files))


def site_domains(site_versions: dict[str, int]) -> dict[int, str]:
    ids = [int(i) for i in site_versions]
    if not ids:
        return {}
    rows = db.session.execute(select(Site.id, Site.domain).where(Site.id.in_(ids)))
    return {site_id: domain for site_id, domain in rows}


def changed_hosts(before: dict[str, int], site_versions: dict[str, int],
                   domains: dict[int, str], focus_site_id: int | None) -> list[tuple[int, str]]:
    """(site id, domain) of the sites whose configuration this deployment changes
    (the rollout's own site first): those are the ones to verify."""
    changed_ids = {int(i) for i, v in site_versions.items() if before.get(i) != v}
    if focus_site_id is not None and str(focus_site_id) in site_versions:
        changed_ids.add(focus_site_id)
    ordered = sorted(changed_ids, key=lambda i: (i != focus_site_id, domains.get(i, "")))
    return [(i, domains[i]) for i in ordered if i in domains]
