"""What a backup of a large instance costs: 10,000 sites (two names and two backends
each, half of them with a certificate and its encrypted key), 100 clients, 20 nodes
with encrypted SSH keys, one config version per node over an encrypted file per site,
and an audit entry per site.

Prints the backup's size and the time to make it and to restore it into an empty
database of the same kind (without tables, so migrations included, and already
migrated), next to the database's own tools in the same run:
``sqlite3 .dump`` (gzip'd) and a copy of the file for SQLite, ``pg_dump -Fc`` and
``pg_restore`` for PostgreSQL (with ``--postgres-admin-url``); then the ratios, and
the peak of Python memory while the backup is made (it reads in batches).

    .venv/bin/python bench/backup_size.py [--sites 10000] [--postgres-admin-url URL]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cryptography.fernet import Fernet  # noqa: E402
from flask import Flask  # noqa: E402
from flask_migrate import upgrade  # noqa: E402
from sqlalchemy import create_engine, insert, make_url, select, text  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402
from werkzeug.security import generate_password_hash  # noqa: E402

from app import create_app  # noqa: E402
from app.extensions import db  # noqa: E402
from app.models import (  # noqa: E402
    AuditLog,
    Certificate,
    ConfigBlob,
    ConfigVersion,
    Node,
    Pool,
    Site,
    SiteBackend,
    SiteHostname,
    User,
)
from app.services import backup  # noqa: E402
from app.services.certificates.pem import self_signed  # noqa: E402
from tests.factories import ssh_key  # noqa: E402

CLIENTS, NODES, POOLS = 100, 20, 10


def seed(n_sites: int) -> None:
    """Bulk inserts through the models (secrets are encrypted as the app stores them)."""
    now = datetime.now(UTC)
    stamps = {"created_at": now, "updated_at": now}
    pools = [Pool(name=f"pool{i}", description="") for i in range(POOLS)]
    db.session.add_all(pools)
    db.session.flush()
    pool_ids = [p.id for p in pools]
    password_hash = generate_password_hash("bench-password-123")
    db.session.execute(insert(User), [
        {"username": "admin", "email": "admin@example.com", "role": "admin",
         "password_hash": password_hash, "is_active": True, "max_sites": 0, **stamps},
        *({"username": f"client{i}", "email": f"client{i}@example.com", "role": "client",
           "password_hash": password_hash, "is_active": True, "max_sites": 1000,
           "totp_secret": "JBSWY3DPEHPK3PXP" if i % 10 == 0 else None, **stamps}
          for i in range(CLIENTS))])
    client_ids = list(db.session.scalars(select(User.id).where(User.role == "client")))
    key = ssh_key()
    db.session.execute(insert(Node), [
        {"name": f"node{i}", "host": f"10.0.{i}.1", "ssh_port": 22, "ssh_user": "root",
         "ssh_private_key": key, "proxy_type": "nginx", "pool_id": pool_ids[i % POOLS],
         "config_dir": "/etc/nginx/rpcc.d", "test_command": "nginx -t",
         "reload_command": "nginx -s reload", "http_port": 80, "https_port": 443,
         "enabled": True, "status": "online", "is_discovered": False, **stamps}
        for i in range(NODES)])
    db.session.execute(insert(Site), [
        {"owner_id": client_ids[i % CLIENTS], "domain": f"site{i}.example.com",
         "pool_id": pool_ids[i % POOLS], "backend_protocol": "http",
         "ssl_mode": "self_signed" if i % 2 else "none", "force_https": bool(i % 2),
         "hsts": False, "http2": True, "websocket": False, "waf_level": "low",
         "cache_enabled": False, "cache_ttl": 300, "geo_mode": "off", "geo_countries": [],
         "ip_allow": [], "ip_deny": ["192.0.2.0/24"], "rate_limit_rps": None,
         "rate_limit_burst": 0, "headers": {"X-Frame-Options": "DENY"}, "blocked": False,
         "blocked_reason": "", "status": "deployed", "config_version": 3, **stamps}
        for i in range(n_sites)])
    sites = list(db.session.execute(select(Site.id, Site.domain, Site.pool_id)))
    db.session.execute(insert(SiteHostname), [
        {"site_id": sid, "name": name, "position": 0} for sid, name, _ in sites
    ] + [{"site_id": sid, "name": "www." + name, "position": 1} for sid, name, _ in sites])
    db.session.execute(insert(SiteBackend), [
        {"site_id": sid, "host": "10.9.0.1", "port": 8080 + k, "weight": 1, "position": k}
        for sid, _, _ in sites for k in range(2)])
    chain, cert_key = self_signed(["bench.example.com"], 90)
    db.session.execute(insert(Certificate), [
        {"site_id": sid, "provider": "self_signed", "status": "valid",
         "domains": [name, "www." + name], "chain_pem": chain, "key_pem": cert_key,
         "not_before": now, "not_after": now, **stamps}
        for index, (sid, name, _) in enumerate(sites) if index % 2])
    files = {sid: (f"# site {name}\nserver {{\n    listen 80;\n    server_name {name} "
                   f"www.{name};\n    location / {{ proxy_pass http://rpcc_{sid}; }}\n}}\n"
                   * 4) for sid, name, _ in sites}
    digests = {sid: hashlib.sha256(content.encode()).hexdigest()
               for sid, content in files.items()}
    for start in range(0, len(sites), 2000):
        db.session.execute(insert(ConfigBlob), [
            {"sha256": digests[sid], "content": files[sid]} for sid, _, _ in
            sites[start:start + 2000]])
    nodes = list(db.session.execute(select(Node.id, Node.pool_id)))
    db.session.execute(insert(ConfigVersion), [
        {"node_id": node_id, "version": 1, "sha256": "0" * 64, "file_count": 0,
         "manifest": {f"sites/{sid}.conf": digests[sid] for sid, _, pid in sites
                      if pid == pool_id},
         "site_versions": {str(sid): 3 for sid, _, pid in sites if pid == pool_id},
         "created_at": now}
        for node_id, pool_id in nodes])
    db.session.execute(insert(AuditLog), [
        {"user_id": client_ids[i % CLIENTS], "username": f"client{i % CLIENTS}",
         "action": "site.create", "object_type": "site", "object_id": str(sid),
         "details": {"domain": name}, "ip": "192.0.2.1", "request_id": uuid.uuid4().hex,
         "created_at": now}
        for i, (sid, name, _) in enumerate(sites)])
    db.session.commit()


class Databases:
    """New, empty databases of one kind, removed at the end."""

    def __init__(self, kind: str, admin_url: str | None, scratch: str) -> None:
        self.kind, self.admin_url, self.scratch = kind, admin_url, scratch
        self.created: list[str] = []

    def new(self, name: str) -> str:
        if self.kind == "sqlite":
            return f"sqlite:///{os.path.join(self.scratch, name + '.db')}"
        assert self.admin_url is not None
        database = f"rpcc_bench_{name}_{uuid.uuid4().hex[:8]}"
        self._admin(f'CREATE DATABASE "{database}"')
        self.created.append(database)
        return make_url(self.admin_url).set(database=database).render_as_string(
            hide_password=False)

    def _admin(self, statement: str) -> None:
        engine = create_engine(self.admin_url or "", isolation_level="AUTOCOMMIT",
                               poolclass=NullPool)
        with engine.connect() as conn:
            conn.execute(text(statement))
        engine.dispose()

    def drop_all(self) -> None:
        for database in self.created:
            self._admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@contextmanager
def app_on(url: str, keys: str) -> Iterator[Flask]:
    app = create_app("testing", {"SQLALCHEMY_DATABASE_URI": url, "ENCRYPTION_KEYS": keys,
                                 "RATELIMIT_ENABLED": False})
    with app.app_context():
        yield app
        db.session.remove()
        db.engine.dispose()


def timed(work: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = work()
    return time.perf_counter() - start, result


def libpq(url: str) -> list[str]:
    """pg_dump/pg_restore connection arguments for a SQLAlchemy URL."""
    parsed = make_url(url)
    return ["-h", parsed.host or "127.0.0.1", "-p", str(parsed.port or 5432),
            "-U", parsed.username or "postgres", "-d", parsed.database or ""]


def baseline(kind: str, source_url: str, target_url: str, scratch: str) -> dict[str, float]:
    """The database's own dump and restore of the same data."""
    figures: dict[str, float] = {}
    if kind == "sqlite":
        source = make_url(source_url).database or ""
        target = make_url(target_url).database or ""
        dump_path = os.path.join(scratch, "dump.sql.gz")

        def dump() -> None:
            with open(dump_path, "wb") as out:
                dumper = subprocess.Popen(["sqlite3", source, ".dump"], stdout=subprocess.PIPE)
                subprocess.run(["gzip", "-6"], stdin=dumper.stdout, stdout=out, check=True)
                assert dumper.wait() == 0

        def load() -> None:
            with open(dump_path, "rb") as dumped:
                unzip = subprocess.Popen(["gzip", "-dc"], stdin=dumped, stdout=subprocess.PIPE)
                subprocess.run(["sqlite3", target], stdin=unzip.stdout, check=True)
                assert unzip.wait() == 0

        figures["dump_seconds"], _ = timed(dump)
        figures["dump_bytes"] = os.path.getsize(dump_path)
        figures["load_seconds"], _ = timed(load)
        copy = os.path.join(scratch, "copy.db")

        def copy_file() -> None:
            with sqlite3.connect(source) as src, sqlite3.connect(copy) as dst:
                src.backup(dst)

        figures["copy_seconds"], _ = timed(copy_file)
        figures["copy_bytes"] = os.path.getsize(copy)
        return figures
    dump_path = os.path.join(scratch, "dump.pgc")
    figures["dump_seconds"], _ = timed(lambda: subprocess.run(
        ["pg_dump", "-Fc", "-f", dump_path, *libpq(source_url)], check=True))
    figures["dump_bytes"] = os.path.getsize(dump_path)
    figures["load_seconds"], _ = timed(lambda: subprocess.run(
        ["pg_restore", "--no-owner", *libpq(target_url), dump_path], check=True))
    return figures


def run(kind: str, n_sites: int, admin_url: str | None) -> None:
    keys = Fernet.generate_key().decode()
    scratch = tempfile.mkdtemp(prefix="rpcc-bench-backup-")
    databases = Databases(kind, admin_url, scratch)
    try:
        source_url = databases.new("source")
        with app_on(source_url, keys):
            upgrade()
            seeded_seconds, _ = timed(lambda: seed(n_sites))
            path = os.path.join(scratch, "backup.tar")
            backup_seconds, manifest = timed(lambda: backup.write_backup_file(None, path))
            tracemalloc.start()
            backup.write_backup_file(None, os.path.join(scratch, "again.tar"))
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        restored_url = databases.new("restored")
        with app_on(restored_url, keys):
            restore_seconds, _ = timed(lambda: backup.restore_backup(
                None, path, allow=backup.Allow.EMPTY))
        with app_on(databases.new("migrated"), keys):
            upgrade()
            rows_seconds, _ = timed(lambda: backup.restore_backup(
                None, path, allow=backup.Allow.EMPTY))
        own = baseline(kind, source_url, databases.new("baseline"), scratch)
        size = os.path.getsize(path)
        print(f"== {kind}: {n_sites} sites, {manifest.rows} rows in {len(manifest.tables)} "
              f"tables, {manifest.secrets} secrets (seeded in {seeded_seconds:.1f} s)")
        print(f"backup bytes: {size}")
        print(f"backup seconds: {backup_seconds:.2f}")
        print(f"backup peak python MiB: {peak / 2**20:.1f}")
        print(f"restore seconds (into a database without tables, migrations included): "
              f"{restore_seconds:.2f}")
        print(f"restore seconds (into a migrated empty database): {rows_seconds:.2f}")
        tool = "sqlite3 .dump | gzip" if kind == "sqlite" else "pg_dump -Fc"
        print(f"baseline {tool} bytes: {own['dump_bytes']:.0f}")
        print(f"baseline {tool} seconds: {own['dump_seconds']:.2f}")
        loader = "sqlite3 < dump" if kind == "sqlite" else "pg_restore"
        print(f"baseline {loader} seconds: {own['load_seconds']:.2f}")
        if kind == "sqlite":
            print(f"baseline file copy bytes: {own['copy_bytes']:.0f}")
            print(f"baseline file copy seconds: {own['copy_seconds']:.2f}")
        print(f"ratio backup/baseline bytes: {size / own['dump_bytes']:.2f}")
        print(f"ratio backup/baseline seconds: {backup_seconds / own['dump_seconds']:.2f}")
        print(f"ratio restore (migrated database)/baseline seconds: "
              f"{rows_seconds / own['load_seconds']:.2f}")
    finally:
        databases.drop_all()
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=10000)
    parser.add_argument("--postgres-admin-url",
                        help="a PostgreSQL server's URL (database postgres) to measure it too")
    args = parser.parse_args()
    logging.getLogger("alembic").setLevel(logging.WARNING)
    run("sqlite", args.sites, None)
    if args.postgres_admin_url:
        run("postgresql", args.sites, args.postgres_admin_url)


if __name__ == "__main__":
    main()
