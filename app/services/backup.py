"""Backups of the whole state, and restoring one into a database of either kind.

A backup is a tar archive: ``manifest.json`` first, then one gzip'd JSON-lines part
per table (``tables/<name>.jsonl.gz``, one JSON array of column values per row),
for every table of the models in dependency order.  The manifest gives the format,
the schema revision, when it was made, each table's columns, rows and SHA-256, and
the fingerprints of the keys that encrypted its secrets.

Leases (which deployment holds a node, which process runs the jobs) belong to
running processes, none of which runs in a restored instance: their tables are in
every backup, empty.

Secrets stay as the database holds them: encrypted columns are copied as their
ciphertext, and the keys are never in a backup.  A key's fingerprint is a hash of
it that cannot be turned back into it; restore compares them with the instance's
own and decrypts one secret of the backup before it changes anything.

Every table is read in one transaction with a consistent snapshot (PostgreSQL:
serializable, read only, deferrable; SQLite: one read transaction, which WAL keeps
while others write), in batches, so a backup taken while rollouts run is one
moment of the state and memory stays bounded however many sites there are.

Restore checks the whole file (format, schema, keys, every part's SHA-256 and row
count) before it touches the database, then replaces every table's rows in one
transaction: what the database held before is gone, nothing is merged.  Which
databases it may replace is the caller's choice (:class:`Allow`); migrations move
only an empty database to the backup's revision, and after the restore to this
application's.
"""

from __future__ import annotations

import base64
import binascii
import enum
import gzip
import hashlib
import hmac
import io
import json
import logging
import os
import re
import secrets
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

import flask_migrate
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from cryptography.fernet import InvalidToken
from flask import current_app
from sqlalchemy import (
    JSON,
    Boolean,
    Connection,
    DateTime,
    Enum,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    cast,
    false,
    func,
    inspect,
    select,
    table,
    text,
    type_coerce,
)
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.sql.elements import ColumnElement

from app.errors import Conflict, NotFound, ValidationError
from app.extensions import db
from app.models import Node, NodeLease, SchedulerLease, Site, User
from app.models.base import as_utc, utcnow
from app.security import EncryptedText, fernet
from app.services import audit
from app.services.common import require_admin
from app.services.startup import schema_revision

log = logging.getLogger(__name__)

FORMAT = "rpcc-backup"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
# A manifest lists tables and columns: far below this even for a large schema.
MANIFEST_MAX_BYTES = 4 * 1024 * 1024
# Rows read from the database, and inserted, per round trip.
BATCH_ROWS = 1000
# Scheduled backups are named after the moment they were made, so names sort by age.
FILE_PATTERN = re.compile(r"rpcc-backup-\d{8}T\d{6}Z\.tar")
# An upload waiting for its confirmation is dropped after this many seconds.
STAGED_MAX_AGE = 3600
STAGED_PREFIX = "rpcc-restore-"
_TOKEN = re.compile(r"[0-9a-f]{32}")
_TABLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# How long a restore waits for other sessions' locks on PostgreSQL before it gives up.
LOCK_TIMEOUT = "30s"
_FINGERPRINT_LABEL = b"rpcc-fernet-key-fingerprint:"
# Rows that belong to running processes rather than to the state: which deployment
# holds a node, which process runs the jobs.  None of those processes runs in a
# restored instance (a lease restored would keep its node from every deployment
# until it expires), so these tables are written empty and marked so.
RUNTIME_TABLES = frozenset({NodeLease.__tablename__, SchedulerLease.__tablename__})
_CHUNK = 1024 * 1024


class Kind(enum.StrEnum):
    """How a column's values are written in a part."""

    PLAIN = "plain"  # numbers, booleans, text and enums as stored
    SECRET = "secret"  # an encrypted column: its Fernet token, never decrypted
    JSON = "json"  # the JSON text as stored (JSON ``null`` and SQL NULL differ)
    DATETIME = "datetime"  # ISO 8601 in UTC


class Allow(enum.Enum):
    """Which databases a restore may replace."""

    #: No account and no node: only what the migrations seed and what a running app
    #: records by itself (job runs, leases).  The command line without --force.
    EMPTY = "empty"
    #: No node and no site, so that no rollout, certificate order or check can be
    #: working on the rows being replaced; accounts are replaced too.  The web UI.
    NO_FLEET = "no fleet"
    #: Anything at the backup's schema revision (the operator stopped the app).
    ANYTHING = "anything"


@dataclass(frozen=True)
class TablePart:
    name: str
    columns: tuple[tuple[str, Kind], ...]
    rows: int
    sha256: str
    runtime: bool = False

    @property
    def path(self) -> str:
        return f"tables/{self.name}.jsonl.gz"


@dataclass(frozen=True)
class Manifest:
    created_at: datetime
    schema_revision: str
    database: str
    tables: tuple[TablePart, ...]
    #: fingerprint of each key that encrypted secrets of the backup -> how many
    keys: dict[str, int]
    #: secrets that none of the instance's keys encrypted (unreadable there too)
    unreadable: int = 0

    @property
    def rows(self) -> int:
        return sum(part.rows for part in self.tables)

    @property
    def secrets(self) -> int:
        return sum(self.keys.values()) + self.unreadable

    def to_json(self) -> bytes:
        return json.dumps({
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": self.created_at.isoformat(),
            "schema_revision": self.schema_revision,
            "database": self.database,
            "encryption": {"keys": [{"fingerprint": fp, "secrets": n}
                                    for fp, n in sorted(self.keys.items())],
                           "unreadable": self.unreadable},
            "tables": [{"name": part.name, "part": part.path, "rows": part.rows,
                        "sha256": part.sha256, "runtime": part.runtime,
                        "columns": [{"name": name, "kind": kind.value}
                                    for name, kind in part.columns]}
                       for part in self.tables],
        }, indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        """:raises ValidationError: for anything but a manifest this version reads."""
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _bad_file("its manifest is not JSON") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise _bad_file("this is not a backup made by this product")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise _bad_file(f"this backup's format (version {version}) is not one this "
                            f"version of the product reads (version {FORMAT_VERSION}): "
                            "restore it with the version that made it, or a newer one")
        try:
            tables = tuple(
                TablePart(_table_name(entry["name"]),
                          tuple((str(c["name"]), Kind(c["kind"])) for c in entry["columns"]),
                          int(entry["rows"]), str(entry["sha256"]),
                          bool(entry.get("runtime", False)))
                for entry in data["tables"])
            encryption = data["encryption"]
            return cls(
                created_at=datetime.fromisoformat(data["created_at"]),
                schema_revision=str(data["schema_revision"]),
                database=str(data["database"]),
                tables=tables,
                keys={str(k["fingerprint"]): int(k["secrets"]) for k in encryption["keys"]},
                unreadable=int(encryption["unreadable"]),
            )
        except (KeyError, TypeError, ValueError):
            raise _bad_file("its manifest is incomplete") from None

    def part(self, name: str) -> TablePart | None:
        return next((part for part in self.tables if part.name == name), None)


@dataclass(frozen=True)
class RestoreReport:
    manifest: Manifest
    #: the revision the database is at now (the application's, when it was newer)
    schema_revision: str
    #: the revision the database was at before, None for a database without tables
    previous_revision: str | None


@dataclass(frozen=True)
class InstanceState:
    """What a database holds that a restore would replace, as people count it."""

    revision: str | None
    accounts: int
    nodes: int
    sites: int

    def allows(self, allow: Allow) -> bool:
        if allow is Allow.EMPTY:
            return not self.accounts and not self.nodes
        if allow is Allow.NO_FLEET:
            return not self.nodes and not self.sites
        return True


@dataclass(frozen=True)
class StagedBackup:
    """An uploaded backup that passed every check, waiting for its confirmation."""

    token: str
    manifest: Manifest
    replaces: InstanceState


@dataclass(frozen=True)
class StoredBackup:
    name: str
    size: int
    modified_at: datetime


def _bad_file(reason: str) -> ValidationError:
    return ValidationError(f"The backup cannot be restored: {reason}.", {"file": reason})


def _table_name(value: Any) -> str:
    if not isinstance(value, str) or not _TABLE_NAME.fullmatch(value):
        raise ValueError("not a table name")
    return value


# --------------------------------------------------------------------------- #
# Keys                                                                        #
# --------------------------------------------------------------------------- #

def _configured_keys() -> list[bytes]:
    return [base64.urlsafe_b64decode(key.strip())
            for key in current_app.config["ENCRYPTION_KEYS"].split(",") if key.strip()]


def key_fingerprint(raw_key: bytes) -> str:
    """Names a key without revealing it: a hash of the whole 256-bit key."""
    return hashlib.sha256(_FINGERPRINT_LABEL + raw_key).hexdigest()[:16]


def instance_key_fingerprints() -> list[str]:
    """The fingerprints of ENCRYPTION_KEYS, in their order (the first encrypts)."""
    return [key_fingerprint(key) for key in _configured_keys()]


class _Signers:
    """Tells which of the instance's keys made a Fernet token by checking its HMAC
    (the first half of a Fernet key signs), without decrypting anything."""

    def __init__(self) -> None:
        self.keys = [(key_fingerprint(key), key[:16]) for key in _configured_keys()]
        self.counts: dict[str, int] = {}
        self.unreadable = 0

    def count(self, token: str) -> None:
        signer = self._signer(token)
        if signer is None:
            self.unreadable += 1
        else:
            self.counts[signer] = self.counts.get(signer, 0) + 1

    def _signer(self, token: str) -> str | None:
        try:
            data = base64.urlsafe_b64decode(token)
        except (binascii.Error, ValueError):
            return None
        if len(data) < 57:  # version, time, IV, one block, HMAC
            return None
        for index, (fingerprint, signing_key) in enumerate(self.keys):
            digest = hmac.new(signing_key, data[:-32], hashlib.sha256).digest()
            if hmac.compare_digest(digest, data[-32:]):
                if index:  # secrets of one key come together: try it first next time
                    self.keys.insert(0, self.keys.pop(index))
                return fingerprint
        return None


def _missing_keys_error(missing: list[str]) -> ValidationError:
    have = ", ".join(instance_key_fingerprints())
    reason = ("this backup's secrets were encrypted with a key this instance does not "
              "have: set ENCRYPTION_KEYS to include it (the backup needs key "
              f"{', '.join(missing)}; this instance has {have})")
    return ValidationError(f"The backup cannot be restored: {reason}.", {"file": reason})


# --------------------------------------------------------------------------- #
# Schema                                                                      #
# --------------------------------------------------------------------------- #

def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(current_app.extensions["migrate"].migrate.get_config())


def head_revision() -> str:
    return ",".join(sorted(_scripts().get_heads()))


def _order(revision: str) -> int:
    """How far from the first migration a revision is (the history is linear)."""
    return len(list(_scripts().iterate_revisions(revision, "base")))


def _kind(column: Any) -> Kind:
    column_type = column.type
    if isinstance(column_type, EncryptedText):
        return Kind.SECRET
    if isinstance(column_type, JSON):
        return Kind.JSON
    if isinstance(column_type, DateTime) and column_type.timezone:
        return Kind.DATETIME
    if isinstance(column_type, Integer | Float | Boolean | String):  # Enum and Text too
        return Kind.PLAIN
    raise TypeError(f"column {column.table.name}.{column.name} has a type backups do "
                    f"not know ({column_type!r}): teach app/services/backup.py to write it")


def _read_expression(column: Any, kind: Kind) -> ColumnElement[Any]:
    """The column as stored: no decryption, no enum or JSON conversion."""
    if kind is Kind.SECRET:
        return type_coerce(column, Text()).label(column.name)
    if kind is Kind.JSON:
        return cast(column, Text()).label(column.name)
    if isinstance(column.type, Enum):
        return type_coerce(column, String()).label(column.name)
    return column


def _encode(kind: Kind, value: Any) -> Any:
    if value is None or kind is not Kind.DATETIME:
        return value
    return as_utc(value).astimezone(UTC).isoformat()


def _decode(kind: Kind, value: Any) -> Any:
    if value is None:
        return None
    if kind is Kind.DATETIME:
        return datetime.fromisoformat(value).astimezone(UTC)
    if kind is Kind.JSON:
        parsed = json.loads(value)
        return JSON.NULL if parsed is None else parsed
    return value


# --------------------------------------------------------------------------- #
# Making a backup                                                             #
# --------------------------------------------------------------------------- #

@contextmanager
def _snapshot() -> Iterator[Connection]:
    """A connection whose reads all see one moment of the database."""
    engine = db.engine
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(
                isolation_level="SERIALIZABLE", postgresql_readonly=True,
                postgresql_deferrable=True) as conn:
            yield conn
            conn.rollback()
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # The driver starts no transaction for reads: one explicit BEGIN holds WAL's
        # snapshot from the first read to the last.
        conn.exec_driver_sql("BEGIN")
        try:
            yield conn
        finally:
            conn.exec_driver_sql("ROLLBACK")


class _HashingWriter(io.RawIOBase):
    """Counts and hashes what goes through to ``target``."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self.sha = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.sha.update(data)
        self.target.write(data)
        return len(data)


def _dump_table(conn: Connection, model_table: Table, target: IO[bytes],
                signers: _Signers) -> TablePart:
    columns = [(column, _kind(column)) for column in model_table.columns]
    stmt = select(*[_read_expression(c, k) for c, k in columns]).order_by(
        *model_table.primary_key.columns)
    runtime = model_table.name in RUNTIME_TABLES
    if runtime:
        stmt = stmt.where(false())
    secret_positions = [i for i, (_, kind) in enumerate(columns) if kind is Kind.SECRET]
    kinds = [kind for _, kind in columns]
    hashing = _HashingWriter(target)
    rows = 0
    # mtime 0: the same rows make the same part, byte for byte.
    with gzip.GzipFile(fileobj=hashing, mode="wb", mtime=0, compresslevel=6) as out:
        result = conn.execution_options(yield_per=BATCH_ROWS).execute(stmt)
        for batch in result.partitions():
            lines = []
            for row in batch:
                for position in secret_positions:
                    if row[position] is not None:
                        signers.count(row[position])
                lines.append(json.dumps([_encode(k, v) for k, v in zip(kinds, row, strict=True)],
                                        ensure_ascii=False, separators=(",", ":")))
            out.write(("\n".join(lines) + "\n").encode())
            rows += len(batch)
    return TablePart(model_table.name, tuple((c.name, k) for c, k in columns), rows,
                     hashing.sha.hexdigest(), runtime)


def write_backup(actor: User | None, target: IO[bytes], *,
                 progress: Callable[[str, int], None] | None = None) -> Manifest:
    """Write a backup of the whole state to ``target`` (written from start to end;
    it need not be seekable).  ``actor`` None is the command line or the scheduler.

    :param progress: called with each table's name and row count once it is read.
    :raises Conflict: when the database is not at this application's schema.
    """
    if actor is not None:
        require_admin(actor)
    head = head_revision()
    tables = db.metadata.sorted_tables
    signers = _Signers()
    parts: list[TablePart] = []
    with tempfile.TemporaryDirectory(prefix="rpcc-backup-") as scratch:
        with _snapshot() as conn:
            revision = ",".join(sorted(MigrationContext.configure(conn).get_current_heads()))
            if revision != head:
                raise Conflict(f"The database is at schema revision {revision}, this "
                               f"application at {head}: run 'flask --app wsgi db upgrade' "
                               "before taking a backup.")
            created_at = utcnow()
            for model_table in tables:
                with open(os.path.join(scratch, model_table.name), "wb") as part_file:
                    part = _dump_table(conn, model_table, part_file, signers)
                parts.append(part)
                if progress is not None:
                    progress(part.name, part.rows)
        manifest = Manifest(created_at=created_at, schema_revision=head,
                            database=db.engine.dialect.name, tables=tuple(parts),
                            keys=signers.counts, unreadable=signers.unreadable)
        with tarfile.open(fileobj=target, mode="w|", format=tarfile.PAX_FORMAT) as archive:
            _add(archive, MANIFEST_NAME, io.BytesIO(manifest.to_json()))
            for part in parts:
                with open(os.path.join(scratch, part.name), "rb") as part_file:
                    _add(archive, part.path, part_file)
    audit.record(actor, "backup.create", "backup", "", {
        "rows": manifest.rows, "tables": len(parts), "schema_revision": head,
        "keys": sorted(manifest.keys)})
    db.session.commit()
    if manifest.unreadable:
        log.warning("backup: %d secret(s) were encrypted with no key of ENCRYPTION_KEYS",
                    manifest.unreadable)
    return manifest


def _add(archive: tarfile.TarFile, name: str, content: IO[bytes]) -> None:
    content.seek(0, os.SEEK_END)
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = content.tell(), 0o600, int(time.time())
    content.seek(0)
    archive.addfile(info, content)


# --------------------------------------------------------------------------- #
# Reading a backup                                                            #
# --------------------------------------------------------------------------- #

class _HashingReader(io.RawIOBase):
    def __init__(self, source: IO[bytes]) -> None:
        self.source = source
        self.sha = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.source.read(len(buffer))
        self.sha.update(data)
        buffer[:len(data)] = data
        return len(data)

    def finish(self) -> str:
        """Hash what is left (gzip may stop reading before the end)."""
        while chunk := self.source.read(_CHUNK):
            self.sha.update(chunk)
        return self.sha.hexdigest()


class _Archive:
    """A backup file opened for reading; parts are read by name, never extracted."""

    def __init__(self, source: IO[bytes]) -> None:
        try:
            self.tar = tarfile.open(fileobj=source, mode="r:")
        except tarfile.TarError:
            raise _bad_file("this is not a backup made by this product (not a tar "
                            "archive)") from None
        self.manifest = Manifest.from_json(self._read_manifest())

    def _read_manifest(self) -> bytes:
        try:
            member = self.tar.getmember(MANIFEST_NAME)
        except KeyError:
            raise _bad_file("this is not a backup made by this product (no "
                            f"{MANIFEST_NAME})") from None
        if not member.isfile() or member.size > MANIFEST_MAX_BYTES:
            raise _bad_file(f"its {MANIFEST_NAME} is not a manifest")
        handle = self.tar.extractfile(member)
        assert handle is not None  # a regular file, checked above
        return handle.read()

    def rows(self, part: TablePart) -> Iterator[list[Any]]:
        """The part's rows as stored, checked against its SHA-256 and row count once
        read to the end: a damaged part raises before its last row is taken."""
        try:
            member = self.tar.getmember(part.path)
        except KeyError:
            raise _bad_file(f"the part {part.path} is missing") from None
        handle = self.tar.extractfile(member)
        if handle is None:
            raise _bad_file(f"the part {part.path} is not a file")
        hashing = _HashingReader(handle)
        count = 0
        try:
            with gzip.GzipFile(fileobj=io.BufferedReader(hashing, _CHUNK), mode="rb") as lines:
                for line in lines:
                    values = json.loads(line)
                    if not isinstance(values, list) or len(values) != len(part.columns):
                        raise ValueError("a row does not match the columns")
                    count += 1
                    yield values
            digest = hashing.finish()
        except (OSError, EOFError, zlib.error, ValueError):
            raise _bad_file(f"the part {part.path} is damaged (SHA-256 or content do "
                            "not match the manifest)") from None
        if digest != part.sha256 or count != part.rows:
            raise _bad_file(f"the part {part.path} is damaged (SHA-256 or row count do "
                            "not match the manifest)")


@contextmanager
def _opened(source: str | IO[bytes]) -> Iterator[_Archive]:
    if isinstance(source, str):
        with open(source, "rb") as handle:
            yield _Archive(handle)
    else:
        yield _Archive(source)


def _check_archive(archive: _Archive) -> Manifest:
    """Everything about the file itself, before the database is touched: a schema
    this application knows, the keys to read its secrets, and every part whole."""
    manifest = archive.manifest
    head = head_revision()
    try:
        known = _scripts().get_revision(manifest.schema_revision) is not None
    except CommandError:
        known = False
    if not known:
        raise _bad_file(f"it was made by a newer version of the product (schema revision "
                        f"{manifest.schema_revision}; this one knows up to {head}): upgrade "
                        "the product before restoring it")
    have = set(instance_key_fingerprints())
    missing = sorted(fp for fp in manifest.keys if fp not in have)
    if missing:
        raise _missing_keys_error(missing)
    # Secrets no key of the backed-up instance could read are unreadable here too:
    # among this many of the first secrets, one at least must decrypt.
    wanted = manifest.unreadable + 1
    samples: list[str] = []
    for part in manifest.tables:
        positions = [i for i, (_, kind) in enumerate(part.columns) if kind is Kind.SECRET]
        for values in archive.rows(part):
            for position in positions:
                if len(samples) < wanted and values[position] is not None:
                    samples.append(str(values[position]))
    if samples and not any(_decrypts(sample) for sample in samples):
        raise _missing_keys_error(sorted(manifest.keys) or ["(none named)"])
    return manifest


def _decrypts(token: str) -> bool:
    try:
        fernet().decrypt(token.encode())
    except InvalidToken:
        return False
    return True


def verify_backup(source: str | IO[bytes]) -> Manifest:
    """Check a backup file as a restore would, without touching the database.

    :raises ValidationError: with the reason under ``file``.
    """
    with _opened(source) as archive:
        return _check_archive(archive)


# --------------------------------------------------------------------------- #
# Restoring                                                                   #
# --------------------------------------------------------------------------- #

def instance_state() -> InstanceState:
    """What this database holds; works on a database without tables too."""
    revision = schema_revision()
    counts: dict[str, int] = {}
    with db.engine.connect() as conn:
        inspector = inspect(conn)
        for model in (User, Node, Site):
            name = model.__tablename__
            counts[name] = (conn.scalar(select(func.count()).select_from(table(name))) or 0
                            if inspector.has_table(name) else 0)
    return InstanceState(revision or None, counts[User.__tablename__], counts[Node.__tablename__],
                         counts[Site.__tablename__])


def _refusal(state: InstanceState, allow: Allow) -> str:
    held = (f"{state.accounts} account(s), {state.nodes} node(s) and {state.sites} "
            "site(s)")
    if allow is Allow.NO_FLEET:
        return (f"This instance has {held}: from the web page a backup replaces only an "
                "instance without nodes and sites (a new installation). Stop the app "
                "and run 'flask --app wsgi backup restore FILE --force' to replace it.")
    return (f"The database is not empty ({held}): restore into an empty database, or "
            "stop every app process and add --force to replace everything in it.")


def _check_target(state: InstanceState, manifest: Manifest, allow: Allow) -> None:
    if not state.allows(allow):
        raise Conflict(_refusal(state, allow))
    if state.revision == manifest.schema_revision:
        return
    if allow is not Allow.EMPTY or not state.allows(Allow.EMPTY):
        raise Conflict(
            f"The database is at schema revision {state.revision or '(none)'} and the "
            f"backup at {manifest.schema_revision}: only an empty database is migrated "
            "to a backup's revision. Restore it into an empty database from the command "
            "line ('flask --app wsgi backup restore FILE').")


def _migrate(current: str | None, target: str) -> None:
    if current is None or _order(current) < _order(target):
        flask_migrate.upgrade(revision=target)
    else:
        flask_migrate.downgrade(revision=target)


def _reflected_tables(conn: Connection, manifest: Manifest) -> list[Table]:
    meta = MetaData()
    meta.reflect(conn)
    tables = [t for t in meta.sorted_tables if t.name != "alembic_version"]
    names = {t.name for t in tables}
    expected = {part.name for part in manifest.tables}
    if names != expected:
        raise _bad_file(f"its tables do not match schema revision "
                        f"{manifest.schema_revision} ({', '.join(sorted(names ^ expected))})")
    for reflected in tables:
        part = manifest.part(reflected.name)
        assert part is not None  # the names match, checked above
        if {c.name for c in reflected.columns} != {name for name, _ in part.columns}:
            raise _bad_file(f"the columns of {part.name} do not match schema revision "
                            f"{manifest.schema_revision}")
        for name, kind in part.columns:
            if kind is Kind.JSON:  # Python None is SQL NULL, JSON.NULL is JSON null
                reflected.c[name].type = JSON(none_as_null=True)
    return tables


def _empty(conn: Connection, tables: list[Table]) -> None:
    if conn.dialect.name == "postgresql":
        # Waits for other sessions' work on these tables, then holds them until commit.
        conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        quote = conn.dialect.identifier_preparer.quote
        conn.execute(text(f"TRUNCATE {', '.join(quote(t.name) for t in tables)}"))
        return
    for model_table in reversed(tables):
        conn.execute(model_table.delete())


def _reset_sequences(conn: Connection, tables: list[Table]) -> None:
    """Explicit ids leave PostgreSQL's sequences behind: the next row would collide."""
    if conn.dialect.name != "postgresql":
        return
    quote = conn.dialect.identifier_preparer.quote
    for model_table in tables:
        for column in model_table.primary_key.columns:
            sequence = conn.scalar(text("SELECT pg_get_serial_sequence(:t, :c)"),
                                   {"t": quote(model_table.name), "c": column.name})
            if sequence is None:
                continue
            highest = f"(SELECT MAX({quote(column.name)}) FROM {quote(model_table.name)})"
            conn.execute(text(f"SELECT setval(CAST(:s AS regclass), COALESCE({highest}, 1), "
                              f"{highest} IS NOT NULL)"), {"s": sequence})


def _replace_rows(archive: _Archive, manifest: Manifest,
                  progress: Callable[[str, int], None] | None) -> None:
    with db.engine.connect() as conn, conn.begin():
        tables = _reflected_tables(conn, manifest)
        _empty(conn, tables)
        for model_table in tables:
            part = manifest.part(model_table.name)
            assert part is not None  # _reflected_tables checked every name
            names = [name for name, _ in part.columns]
            kinds = [kind for _, kind in part.columns]
            batch: list[dict[str, Any]] = []
            for values in archive.rows(part):
                try:
                    batch.append({name: _decode(kind, value) for name, kind, value
                                  in zip(names, kinds, values, strict=True)})
                except (ValueError, TypeError):
                    raise _bad_file(f"the part {part.path} holds a value that does not fit "
                                    "its column") from None
                if len(batch) == BATCH_ROWS:
                    conn.execute(model_table.insert(), batch)
                    batch = []
            if batch:
                conn.execute(model_table.insert(), batch)
            if progress is not None:
                progress(part.name, part.rows)
        _reset_sequences(conn, tables)


def restore_backup(actor: User | None, source: str | IO[bytes], *, allow: Allow,
                   progress: Callable[[str, int], None] | None = None) -> RestoreReport:
    """Replace the whole state with a backup's.  Nothing changes unless every check
    passes: the file's (format, schema, keys, every part's SHA-256) and the
    database's (``allow``).  The rows are replaced in one transaction.

    :raises ValidationError: the file cannot be restored (reason under ``file``).
    :raises Conflict: the database may not be replaced, or is busy.
    """
    if actor is not None:
        require_admin(actor)
    by = actor.username if actor is not None else "system"
    with _opened(source) as archive:
        manifest = _check_archive(archive)
        state = instance_state()
        _check_target(state, manifest, allow)
        # Our own session's transaction must not hold locks the restore waits for.
        db.session.close()
        if state.revision != manifest.schema_revision:
            _migrate(state.revision, manifest.schema_revision)
        try:
            _replace_rows(archive, manifest, progress)
        except IntegrityError as exc:
            log.warning("restore refused by the database's constraints: %s", exc)
            raise _bad_file("its rows break the schema's constraints, so they are not one "
                            "moment of a database; nothing changed") from None
        except OperationalError as exc:
            log.warning("restore refused by the database: %s", exc)
            raise Conflict("The database is busy: another process holds its tables. Stop "
                           "the app's processes and restore again; nothing changed.") from None
    head = head_revision()
    if manifest.schema_revision != head:
        flask_migrate.upgrade(revision=head)
    audit.record(None, "backup.restore", "backup", "", {
        "by": by, "created_at": manifest.created_at.isoformat(), "rows": manifest.rows,
        "schema_revision": manifest.schema_revision, "upgraded_to": head})
    db.session.commit()
    return RestoreReport(manifest, head, state.revision)


# --------------------------------------------------------------------------- #
# The web page's two steps: check an upload, then restore it once confirmed   #
# --------------------------------------------------------------------------- #

def _expired() -> ValidationError:
    return ValidationError("This upload has expired: choose the backup file again.",
                           {"file": "this upload has expired: choose the file again"})


def _staged_path(token: str) -> str:
    if not _TOKEN.fullmatch(token):
        raise _expired()
    return os.path.join(tempfile.gettempdir(), f"{STAGED_PREFIX}{token}.tar")


def _drop_expired_uploads() -> None:
    cutoff = time.time() - STAGED_MAX_AGE
    directory = tempfile.gettempdir()
    for name in os.listdir(directory):
        if name.startswith(STAGED_PREFIX) and name.endswith(".tar"):
            path = os.path.join(directory, name)
            try:
                if os.stat(path).st_mtime < cutoff:
                    os.remove(path)
            except FileNotFoundError:
                pass


def stage_backup(actor: User, upload: IO[bytes]) -> StagedBackup:
    """Keep an uploaded backup (readable by this process's user only) once it passed
    every check a restore makes, so that its summary can be confirmed.

    :raises ValidationError: the file cannot be restored (reason under ``file``).
    :raises Conflict: this instance may not be replaced from the web page.
    """
    require_admin(actor)
    _drop_expired_uploads()
    token = secrets.token_hex(16)
    path = _staged_path(token)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        shutil.copyfileobj(upload, out, _CHUNK)
    try:
        manifest = verify_backup(path)
        state = instance_state()
        _check_target(state, manifest, Allow.NO_FLEET)
    except BaseException:
        os.remove(path)
        raise
    return StagedBackup(token, manifest, state)


def staged_backup(actor: User, token: str) -> StagedBackup:
    """A staged upload's summary, checked again (the instance may have changed)."""
    require_admin(actor)
    path = _staged_path(token)
    if not os.path.exists(path):
        raise _expired()
    manifest = verify_backup(path)
    state = instance_state()
    _check_target(state, manifest, Allow.NO_FLEET)
    return StagedBackup(token, manifest, state)


def restore_staged(actor: User, token: str) -> RestoreReport:
    """Restore a staged upload (checked again: the instance may have changed)."""
    require_admin(actor)
    path = _staged_path(token)
    if not os.path.exists(path):
        raise _expired()
    try:
        return restore_backup(actor, path, allow=Allow.NO_FLEET)
    finally:
        os.remove(path)


def discard_staged(actor: User, token: str) -> None:
    require_admin(actor)
    try:
        os.remove(_staged_path(token))
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------------- #
# Scheduled backups                                                           #
# --------------------------------------------------------------------------- #

def backup_directory() -> str:
    return str(current_app.config["BACKUP_DIR"] or "")


def stored_backups(actor: User) -> list[StoredBackup]:
    """The scheduled backups in BACKUP_DIR, newest first."""
    require_admin(actor)
    directory = backup_directory()
    if not directory or not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        if FILE_PATTERN.fullmatch(name):
            stat = os.stat(os.path.join(directory, name))
            found.append(StoredBackup(name, stat.st_size,
                                      datetime.fromtimestamp(stat.st_mtime, UTC)))
    return sorted(found, key=lambda stored: stored.name, reverse=True)


def stored_backup_path(actor: User, name: str) -> str:
    """The path of one of :func:`stored_backups` (a name, never a path, is accepted)."""
    if not any(stored.name == name for stored in stored_backups(actor)):
        raise NotFound("no such backup")
    return os.path.join(backup_directory(), name)


def write_backup_file(actor: User | None, path: str, *,
                      progress: Callable[[str, int], None] | None = None) -> Manifest:
    """:func:`write_backup` into a new file readable by this user only, written
    beside ``path`` and renamed once complete, so a file by that name is whole.

    :raises Conflict: ``path`` exists (a backup is never overwritten).
    """
    if os.path.exists(path):
        raise Conflict(f"{path} exists: a backup never replaces a file")
    partial = path + ".partial"
    try:
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise Conflict(f"{partial} exists: another backup is being written there, or "
                       "one was interrupted (remove it)") from None
    try:
        with os.fdopen(descriptor, "wb") as out:
            manifest = write_backup(actor, out, progress=progress)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        os.remove(partial)
        raise
    os.replace(partial, path)
    return manifest


def scheduled_backup() -> str:
    """The ``backups`` job: a backup in BACKUP_DIR, keeping the newest BACKUP_KEEP."""
    directory = backup_directory()
    if not directory:
        raise ValidationError("BACKUP_DIR is not set: scheduled backups are off",
                              {"BACKUP_DIR": "not set"})
    keep = int(current_app.config["BACKUP_KEEP"])
    if keep < 1:
        raise ValidationError("BACKUP_KEEP must be at least 1", {"BACKUP_KEEP": str(keep)})
    os.makedirs(directory, mode=0o700, exist_ok=True)
    name = f"rpcc-backup-{utcnow():%Y%m%dT%H%M%SZ}.tar"
    path = os.path.join(directory, name)
    manifest = write_backup_file(None, path)
    names = sorted((n for n in os.listdir(directory) if FILE_PATTERN.fullmatch(n)),
                   reverse=True)
    for old in names[keep:]:
        os.remove(os.path.join(directory, old))
    return (f"{name}: {manifest.rows} rows in {len(manifest.tables)} tables, "
            f"{os.path.getsize(path)} bytes; {len(names[keep:])} older backup(s) removed")
