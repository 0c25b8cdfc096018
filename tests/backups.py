"""What the backup tests share: the app they back up (its key and its app on the
suite's database, fixtures ``key`` and ``source``), a state with a secret of each
kind to back up, fresh databases to restore into, every row of a database (and of a
backup file) read independently of the backup code, and backups rewritten as a
damaged, foreign or older one would be."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from cryptography.fernet import Fernet
from flask import Flask, g, request_started
from sqlalchemy import JSON, DateTime, MetaData, Text, cast, create_engine, select
from sqlalchemy.pool import NullPool

from app.extensions import db, ssh
from app.models import Certificate, Node, NotificationChannel, User
from app.models.base import as_utc
from app.services import tokens, two_factor
from app.services.notifiers import ChannelInput, channels
from tests import factories
from tests.components import postgres_database
from tests.conftest import _DATABASE_URL, make_app

KINDS = ("sqlite", "postgresql")


def new_key() -> str:
    return Fernet.generate_key().decode()


@contextmanager
def fresh_database(kind: str) -> Iterator[str]:
    """A database without a single table: a new SQLite file, or a new database on the
    suite's PostgreSQL server (dropped afterwards)."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="rpcc-restore-") as directory:
            yield f"sqlite:///{directory}/restored.db"
        return
    with postgres_database("rpcc_restore", migrated=False) as url:
        yield url


@contextmanager
def app_on(url: str, keys: str) -> Iterator[Flask]:
    """An app on ``url`` holding ``keys``; its connections are closed afterwards, so
    that its database can be dropped."""
    app = make_app(SQLALCHEMY_DATABASE_URI=url, ENCRYPTION_KEYS=keys)

    def forget(sender: Flask, **extra: Any) -> None:
        # As tests/conftest.py does for the suite's app: test requests share the
        # test's app context, where Flask-Login caches the signed-in user.
        g.pop("_login_user", None)

    try:
        with request_started.connected_to(forget, app):
            yield app
    finally:
        with app.app_context():
            db.engine.dispose()


@pytest.fixture()
def key() -> str:
    """The key the backed-up app holds alone."""
    return new_key()


@pytest.fixture()
def source(db: Any, key: str) -> Iterator[Flask]:
    """An app on the suite's (emptied) database holding ``key`` alone, in its context,
    with an SSH pool of its own (closed at the end)."""
    with app_on(_DATABASE_URL, key) as app, app.app_context():
        yield app
        ssh.reset(app)


Rows = dict[str, list[dict[str, Any]]]


def _backup_entry(table: str, row: dict[str, Any]) -> bool:
    return table == "audit_log" and str(row["action"]).startswith("backup.")


def table_rows(url: str) -> Rows:
    """Every row of every table by primary key, read through reflection (not the
    models, not the backup code): JSON as its stored text, times in UTC, secrets as
    their ciphertext.  The audit log's own backup entries are left out (they are
    written after the snapshot, and by the restore)."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        meta = MetaData()
        meta.reflect(engine)
        rows: Rows = {}
        with engine.connect() as conn:
            for name, table in sorted(meta.tables.items()):
                if name == "alembic_version":
                    continue
                columns = [cast(c, Text()).label(c.name) if isinstance(c.type, JSON) else c
                           for c in table.columns]
                stmt = select(*columns).order_by(*table.primary_key.columns)
                found = [{c.name: as_utc(v) if isinstance(c.type, DateTime) and v is not None
                          else v for c, v in zip(table.columns, row, strict=True)}
                         for row in conn.execute(stmt)]
                rows[name] = [row for row in found if not _backup_entry(name, row)]
        return rows
    finally:
        engine.dispose()


def backup_rows(path: str) -> Rows:
    """The rows a backup file holds, read from its parts without the backup code, in
    :func:`table_rows`' shape."""
    with tarfile.open(path, "r:") as archive:
        manifest = json.loads(archive.extractfile("manifest.json").read())  # type: ignore[union-attr]
        rows: Rows = {}
        for entry in manifest["tables"]:
            content = gzip.decompress(archive.extractfile(entry["part"]).read())  # type: ignore[union-attr]
            names = [c["name"] for c in entry["columns"]]
            kinds = {c["name"]: c["kind"] for c in entry["columns"]}
            found = [{name: datetime.fromisoformat(value)
                      if kinds[name] == "datetime" and value is not None else value
                      for name, value in zip(names, json.loads(line), strict=True)}
                     for line in content.decode().splitlines()]
            rows[entry["name"]] = [row for row in found if not _backup_entry(entry["name"], row)]
    return rows


def table_columns(url: str) -> dict[str, list[str]]:
    """Each table's columns (the migrations' own bookkeeping left out)."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        meta = MetaData()
        meta.reflect(engine)
        return {name: [c.name for c in t.columns] for name, t in meta.tables.items()
                if name != "alembic_version"}
    finally:
        engine.dispose()


def schema_tables(url: str) -> list[str]:
    return sorted(table_columns(url))


def rewrite(source: str, target: str, *,
            manifest: Callable[[dict[str, Any]], None] = lambda m: None,
            rows: Callable[[str, list[Any]], list[Any]] | None = None) -> None:
    """Copy a backup, letting ``manifest`` change its manifest (a dict) and ``rows``
    change each part's rows (given the table's name and the row); each part's SHA-256
    and row count follow the new content unless ``rows`` is None."""
    with tarfile.open(source, "r:") as archive:
        data = json.loads(archive.extractfile("manifest.json").read())  # type: ignore[union-attr]
        parts = {m.name: archive.extractfile(m).read()  # type: ignore[union-attr]
                 for m in archive.getmembers() if m.name != "manifest.json"}
    if rows is not None:
        for entry in data["tables"]:
            lines = gzip.decompress(parts[entry["part"]]).decode().splitlines()
            kept = [rows(entry["name"], json.loads(line)) for line in lines]
            content = "".join(json.dumps(row) + "\n" for row in kept).encode()
            parts[entry["part"]] = gzip.compress(content, mtime=0)
            entry["rows"] = len(kept)
            entry["sha256"] = hashlib.sha256(parts[entry["part"]]).hexdigest()
    manifest(data)
    listed = {entry["part"] for entry in data["tables"]}
    with tarfile.open(target, "w") as archive:
        for name, content in [("manifest.json", json.dumps(data).encode()),
                              *((n, c) for n, c in parts.items() if n in listed)]:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))


def damage(path: str, part: str) -> None:
    """Flip one byte in the middle of ``part``'s content, in place."""
    with tarfile.open(path, "r:") as archive:
        member = archive.getmember(part)
    assert member.size > 0
    with open(path, "r+b") as handle:
        handle.seek(member.offset_data + member.size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))


TELEGRAM_TOKEN = "123456:" + "B" * 35


@dataclass
class Seeded:
    """The secrets of each kind as their owners gave them, and where they are."""

    node_id: int
    ssh_key: str
    certificate_id: int
    certificate_key: str
    user_id: int
    totp_secret: str
    channel_id: int
    channel_secret: str


def seed() -> Seeded:
    """A little of everything: accounts, a node with its SSH key, a self-signed site
    (its certificate key), two-factor enrolment (TOTP secret), a Telegram channel (its
    bot token), a config version (encrypted files), a rollout, a token, JSON null."""
    admin = factories.make_user("admin", "root")
    alice = factories.make_user("client", "alice")
    ssh_key = factories.ssh_key()
    node = factories.make_node("edge-1", ssh_private_key=ssh_key)
    node.last_check = {"ssh": {"ok": True, "detail": "ü"}}
    db.session.commit()
    node.last_check = None  # JSON null, which is not SQL NULL
    db.session.commit()
    site = factories.make_site(alice, "shop.example.com", ssl_mode="self_signed")
    certificate = site.certificate
    assert certificate is not None
    enrolment = two_factor.begin_enrolment(alice)
    channel = channels.create_channel(alice, ChannelInput(
        name="phone", kind="telegram", target="4242", secret=TELEGRAM_TOKEN))
    factories.make_version(node, {"rpcc.conf": "# one\n", "sites/shop.conf": "# two\n"})
    factories.make_rollout(site)
    tokens.create_token(admin, "ci")
    return Seeded(node.id, ssh_key, certificate.id, certificate.key_pem or "", alice.id,
                  enrolment.secret, channel.id, TELEGRAM_TOKEN)


def assert_secrets_readable(seeded: Seeded) -> None:
    node = db.session.get(Node, seeded.node_id)
    assert node is not None and node.ssh_private_key == seeded.ssh_key
    cert = db.session.get(Certificate, seeded.certificate_id)
    assert cert is not None and cert.key_pem == seeded.certificate_key
    assert seeded.certificate_key.startswith("-----BEGIN")
    user = db.session.get(User, seeded.user_id)
    assert user is not None and user.totp_secret == seeded.totp_secret
    channel = db.session.get(NotificationChannel, seeded.channel_id)
    assert channel is not None and channel.secret == seeded.channel_secret
