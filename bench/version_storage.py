"""What recording config versions costs the database: a pool of 2,000 sites on 10
nginx nodes, rendered by the real engine (the mix of bench/render.py, each TLS site
with a key and certificate of its own), records one version per node; then one site
changes and every node records its next version.

Versions are recorded as a rollout records them (one content-addressed store for
the batch, then the version rows).  The baseline, measured in the same run on the
same database, is the former storage: every version an encrypted JSON copy of all
its node's files.  Each figure is the growth of the SQLite file (pages added), and
the bytes of the values written.

    .venv/bin/python bench/version_storage.py [--sites 2000] [--nodes 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flask_migrate import upgrade  # noqa: E402
from sqlalchemy import func, insert, select, text  # noqa: E402

from app import create_app  # noqa: E402
from app.engines.base import NodeSpec, SiteSpec  # noqa: E402
from app.engines.nginx import ENGINE as NGINX  # noqa: E402
from app.extensions import db  # noqa: E402
from app.models import ConfigBlob, ConfigVersion  # noqa: E402
from app.security import encrypt  # noqa: E402
from app.services.deployments import files_digest, probe_token  # noqa: E402
from app.services.deployments.blobs import store_files  # noqa: E402
from bench.render import node_spec, sites  # noqa: E402
from tests import factories  # noqa: E402
from tests.nginx_node import self_signed  # noqa: E402

# The former config_versions row, kept beside the real table for the baseline.
BASELINE_TABLE = """CREATE TABLE full_copy_versions (
    id INTEGER PRIMARY KEY, node_id INTEGER NOT NULL, version INTEGER NOT NULL,
    files TEXT NOT NULL, sha256 VARCHAR(64) NOT NULL, site_versions JSON NOT NULL,
    file_count INTEGER NOT NULL, created_at DATETIME NOT NULL)"""


def pool_sites(count: int) -> list[SiteSpec]:
    """The mix of bench/render.py, with a certificate of its own for each TLS site."""
    shared = self_signed(["shared.example.com"])
    return [replace(site, certificate=self_signed([site.domain]))
            if site.certificate is not None else site for site in sites(count, shared)]


def node_files(spec: NodeSpec, pool: list[SiteSpec]) -> dict[str, str]:
    """A node's files as a deployment renders them (the engine's probe included)."""
    files = NGINX.render(spec, pool).files
    files.update(NGINX.probe(spec, probe_token(files)))
    return files


def database_bytes() -> int:
    return int(db.session.scalar(text("PRAGMA page_count"))) * int(
        db.session.scalar(text("PRAGMA page_size")))


def record(node_ids: list[int], file_sets: list[dict[str, str]], number: int) -> int:
    """Record one content-addressed version per node; bytes of the values written."""
    before_blobs = db.session.scalar(select(func.coalesce(func.max(ConfigBlob.id), 0)))
    manifests = store_files(file_sets)
    rows = [{"node_id": node_id, "version": number, "manifest": manifest,
             "sha256": files_digest(files), "site_versions": {}, "file_count": len(files)}
            for node_id, files, manifest in zip(node_ids, file_sets, manifests, strict=True)]
    db.session.execute(insert(ConfigVersion), rows)
    db.session.commit()
    blob_bytes = db.session.scalar(select(func.coalesce(
        func.sum(func.length(text("content")) + 64), 0)).select_from(ConfigBlob)
        .where(ConfigBlob.id > before_blobs))
    return int(blob_bytes) + sum(len(json.dumps(row["manifest"])) + 64 for row in rows)


def record_full_copies(node_ids: list[int], file_sets: list[dict[str, str]],
                       number: int) -> int:
    """Record one version per node the former way; bytes of the values written."""
    rows = [{"node_id": node_id, "version": number,
             "files": encrypt(json.dumps(files)), "sha256": files_digest(files),
             "site_versions": "{}", "file_count": len(files), "created_at": "2026-12-06"}
            for node_id, files in zip(node_ids, file_sets, strict=True)]
    db.session.execute(text(
        "INSERT INTO full_copy_versions (node_id, version, files, sha256, site_versions, "
        "file_count, created_at) VALUES (:node_id, :version, :files, :sha256, "
        ":site_versions, :file_count, :created_at)"), rows)
    db.session.commit()
    return sum(len(row["files"]) + 64 for row in rows)


def measured(action: object, *args: object) -> tuple[int, int, float]:
    """(file growth, value bytes, seconds) of one recording."""
    assert callable(action)
    size = database_bytes()
    started = time.perf_counter()
    written = action(*args)
    return database_bytes() - size, written, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sites", type=int, default=2000)
    parser.add_argument("--nodes", type=int, default=10)
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="rpcc-bench-versions-")
    app = create_app("testing", {
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{os.path.join(directory, 'bench.db')}"})
    try:
        with app.app_context():
            upgrade()
            db.session.execute(text(BASELINE_TABLE))
            db.session.commit()
            pool = pool_sites(args.sites)
            specs = [replace(node_spec("nginx"), name=f"edge{n}",
                             listen_address=f"192.0.2.{n + 1}") for n in range(args.nodes)]
            node_ids = [factories.make_node(spec.name).id for spec in specs]
            before = [node_files(spec, pool) for spec in specs]
            # One site's change: a header added, as an owner's edit does.
            changed = list(pool)
            changed[7] = replace(changed[7], headers=(("X-Bench", "v2"),))
            after = [node_files(spec, changed) for spec in specs]
            changed_paths = {path for path in after[0] if before[0].get(path) != after[0][path]}

            first = measured(record, node_ids, before, 1)
            first_old = measured(record_full_copies, node_ids, before, 1)
            change = measured(record, node_ids, after, 2)
            change_old = measured(record_full_copies, node_ids, after, 2)
            manifests = sum(len(json.dumps(m)) + 64 for m in db.session.scalars(
                select(ConfigVersion.manifest).where(ConfigVersion.version == 2)))
            blobs = db.session.scalar(select(func.count()).select_from(ConfigBlob))
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    print(f"pool: {args.sites:,} sites on {args.nodes} nginx nodes, "
          f"{len(before[0]):,} files per node; the change touches {len(changed_paths)} "
          f"file(s) per node ({', '.join(sorted(changed_paths))})")
    print(f"  {'recording':<34}{'file growth':>14}{'values':>14}{'seconds':>9}")
    for label, (growth, written, seconds) in (
            ("first versions, full copies (old)", first_old),
            ("first versions, content-addressed", first),
            ("one-site change, full copies (old)", change_old),
            ("one-site change, content-addressed", change)):
        print(f"  {label:<34}{growth:>14,}{written:>14,}{seconds:>9.2f}")
    print(f"  one-site change: {change_old[0] / max(change[0], 1):.1f}x less file growth, "
          f"{change_old[1] / max(change[1], 1):.1f}x fewer bytes written than full copies")
    print(f"  of the change's content-addressed bytes, manifests: {manifests:,} "
          f"({manifests / max(change[1], 1):.0%}); blobs stored in all: {blobs:,}")


if __name__ == "__main__":
    main()
