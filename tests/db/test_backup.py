"""Backups of the whole state and their restore, on the suite's database (SQLite or
PostgreSQL) into fresh databases of both kinds: every row comes back equal, every
secret readable under the same keys, and nothing changes unless every check passes."""

from __future__ import annotations

import json
import tarfile
import threading
from pathlib import Path
from typing import Any

import flask_migrate
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import Text, select, type_coerce, update

from app.errors import Conflict, ValidationError
from app.extensions import db
from app.models import User
from app.services import backup, jobs, nodes, tokens
from app.services.node_leases import node_lease
from app.services.startup import schema_revision
from tests import factories
from tests.backups import (
    KINDS,
    app_on,
    assert_secrets_readable,
    backup_rows,
    damage,
    fresh_database,
    new_key,
    rewrite,
    schema_tables,
    seed,
    table_columns,
    table_rows,
)
from tests.backups import key as key  # noqa: F401  (fixture)
from tests.backups import source as source  # noqa: F401  (fixture)
from tests.conftest import _DATABASE_URL, make_app

MISSING_KEY = "this backup's secrets were encrypted with a key this instance does not have"


def take_backup(tmp_path: Path, name: str = "backup.tar", **kwargs: Any) -> str:
    path = str(tmp_path / name)
    backup.write_backup_file(None, path, **kwargs)
    return path


@pytest.mark.parametrize("kind", KINDS)
def test_a_backup_restores_into_a_fresh_database_with_every_row_equal_and_secrets_readable(
        source, key, tmp_path, kind):
    seeded = seed()
    before = table_rows(_DATABASE_URL)
    path = take_backup(tmp_path)
    assert backup_rows(path) == before
    manifest = backup.verify_backup(path)
    assert manifest.schema_revision == backup.head_revision()
    assert [part.name for part in manifest.tables] == [t.name for t in db.metadata.sorted_tables]
    assert manifest.keys == {backup.instance_key_fingerprints()[0]: manifest.secrets}
    # Nodes (key), certificates (key), users (TOTP), channels, the config blobs.
    assert manifest.secrets >= 5 and manifest.unreadable == 0
    raw = Path(path).read_bytes()
    for secret in (seeded.ssh_key, seeded.certificate_key, seeded.totp_secret,
                   seeded.channel_secret):
        assert secret.encode() not in raw
    assert key.encode() not in raw

    with fresh_database(kind) as url, app_on(url, key) as target, target.app_context():
        report = backup.restore_backup(None, path, allow=backup.Allow.EMPTY)
        assert report.previous_revision is None
        assert report.schema_revision == backup.head_revision()
        after = table_rows(url)
        assert after == before
        assert_secrets_readable(seeded)
        # New rows take ids after the restored ones (PostgreSQL's sequences moved on).
        newcomer = factories.make_user("client", "newcomer")
        assert newcomer.id > max(row["id"] for row in before["users"])
        assert nodes.get_node_by_name(factories.make_user("admin"), "edge-1").id == seeded.node_id


def test_a_backup_is_one_moment_of_the_database_while_others_write(source, key, tmp_path):
    """Rows written while the backup reads (a user once ``users`` was read, with a token
    in a table read later) are not in it: the backup restores without orphans."""
    seed()
    written: list[int] = []

    def write_meanwhile() -> None:
        with source.app_context():
            late = factories.make_user("client", "latecomer")
            tokens.create_token(late, "late")
            written.append(late.id)
            db.session.remove()

    def progress(table: str, rows: int) -> None:
        if table == "users":
            writer = threading.Thread(target=write_meanwhile)
            writer.start()
            writer.join()

    path = take_backup(tmp_path, progress=progress)
    assert written, "the writer did not run"
    manifest = backup.verify_backup(path)
    part = manifest.part("api_tokens")
    assert part is not None and part.rows == 1  # the seeded one only
    with fresh_database("sqlite") as url, app_on(url, key) as target, target.app_context():
        backup.restore_backup(None, path, allow=backup.Allow.EMPTY)
        names = set(db.session.scalars(select(User.username)))
        assert "latecomer" not in names and {"root", "alice"} <= names


def test_a_restore_without_the_key_is_refused_and_with_it_among_others_succeeds(
        source, key, tmp_path):
    seeded = seed()
    path = take_backup(tmp_path)
    with fresh_database("sqlite") as url:
        with app_on(url, new_key()) as stranger, stranger.app_context():
            with pytest.raises(ValidationError, match=MISSING_KEY) as refused:
                backup.restore_backup(None, path, allow=backup.Allow.EMPTY)
            assert "set ENCRYPTION_KEYS to include it" in refused.value.message
            assert backup.instance_key_fingerprints()[0] in refused.value.message
        assert schema_tables(url) == []  # not even migrated
        with app_on(url, f"{new_key()},{key}") as rotated, rotated.app_context():
            backup.restore_backup(None, path, allow=backup.Allow.EMPTY)
            assert_secrets_readable(seeded)


def test_a_secret_the_keys_cannot_decrypt_is_refused_even_when_the_fingerprints_match(
        source, key, tmp_path):
    """The manifest's fingerprints are checked, and one secret is decrypted too."""
    seed()
    path = take_backup(tmp_path)
    forged = str(tmp_path / "forged.tar")
    rewrite(path, forged, manifest=lambda m: m["encryption"].update(keys=[]))
    with fresh_database("sqlite") as url, app_on(url, new_key()) as stranger, \
            stranger.app_context():
        with pytest.raises(ValidationError, match=MISSING_KEY):
            backup.restore_backup(None, forged, allow=backup.Allow.EMPTY)
        assert schema_tables(url) == []


def test_a_damaged_part_is_refused_before_anything_changes(source, key, tmp_path):
    seed()
    path = take_backup(tmp_path)
    damage(path, "tables/sites.jsonl.gz")
    with fresh_database("sqlite") as url, app_on(url, key) as target, target.app_context():
        with pytest.raises(ValidationError, match="tables/sites.jsonl.gz is damaged"):
            backup.restore_backup(None, path, allow=backup.Allow.EMPTY)
        assert schema_tables(url) == []


def test_a_part_whose_rows_changed_with_its_hash_still_fails_the_manifest(source, key,
                                                                          tmp_path):
    seed()
    path = take_backup(tmp_path)
    edited = str(tmp_path / "edited.tar")
    # New content and a matching hash, but the manifest still says how many rows.
    rewrite(path, edited, rows=lambda table, row: row,
            manifest=lambda m: next(t for t in m["tables"] if t["name"] == "users")
            .update(rows=99))
    with fresh_database("sqlite") as url, app_on(url, key) as target, target.app_context():
        with pytest.raises(ValidationError, match="tables/users.jsonl.gz is damaged"):
            backup.restore_backup(None, edited, allow=backup.Allow.EMPTY)


def test_files_that_are_not_backups_of_this_schema_are_refused(source, key, tmp_path):
    seed()
    path = take_backup(tmp_path)
    newer = str(tmp_path / "newer.tar")
    rewrite(path, newer, manifest=lambda m: m.update(schema_revision="9999"))
    other_format = str(tmp_path / "format.tar")
    rewrite(path, other_format, manifest=lambda m: m.update(format_version=2))
    not_a_tar = tmp_path / "notes.txt"
    not_a_tar.write_text("hello")
    foreign = tmp_path / "foreign.tar"
    with tarfile.open(foreign, "w") as archive:
        archive.add(not_a_tar, arcname="notes.txt")
    refusals = {
        newer: "made by a newer version of the product (schema revision 9999",
        other_format: "format (version 2) is not one this version of the product reads",
        str(not_a_tar): "not a backup made by this product (not a tar archive)",
        str(foreign): "not a backup made by this product (no manifest.json)",
    }
    with fresh_database("sqlite") as url, app_on(url, key) as target, target.app_context():
        for candidate, reason in refusals.items():
            with pytest.raises(ValidationError) as refused:
                backup.restore_backup(None, candidate, allow=backup.Allow.EMPTY)
            assert reason in refused.value.fields["file"]
        assert schema_tables(url) == []


def test_restoring_into_a_database_in_use_is_refused_unless_forced(source, key, tmp_path):
    seeded = seed()
    before = table_rows(_DATABASE_URL)
    path = take_backup(tmp_path)
    with fresh_database("sqlite") as url, app_on(url, key) as target, target.app_context():
        backup.restore_backup(None, path, allow=backup.Allow.EMPTY)
        factories.make_user("client", "carol")  # the restored instance lives on
        for allow in (backup.Allow.EMPTY, backup.Allow.NO_FLEET):
            with pytest.raises(Conflict, match="3 account"):
                backup.restore_backup(None, path, allow=allow)
        assert "carol" in set(db.session.scalars(select(User.username)))
        backup.restore_backup(None, path, allow=backup.Allow.ANYTHING)
        db.session.expire_all()
        assert "carol" not in set(db.session.scalars(select(User.username)))
        assert table_rows(url) == before
        assert_secrets_readable(seeded)


def test_an_empty_but_migrated_database_counts_as_empty(source, key, tmp_path):
    """What the migrations seed and what a running app records by itself (a job run)
    is replaced without --force; nothing of it is merged into the restored state."""
    seed()
    before = table_rows(_DATABASE_URL)
    path = take_backup(tmp_path)
    with fresh_database("sqlite") as url, app_on(url, key) as target, target.app_context():
        flask_migrate.upgrade()
        jobs.run_recorded("job_retention", lambda: "nothing", "tester")
        state = backup.instance_state()
        assert (state.accounts, state.nodes, state.sites) == (0, 0, 0)
        backup.restore_backup(None, path, allow=backup.Allow.EMPTY)
        assert table_rows(url) == before


@pytest.mark.parametrize("target_state", ["no tables", "migrated to head"])
def test_a_backup_of_an_older_schema_is_migrated_up_to_this_one(source, key, tmp_path,
                                                                  target_state):
    """A backup made at the previous revision (derived here from one of this revision)
    restores into an empty database, which ends at this application's revision."""
    seeded = seed()
    path = take_backup(tmp_path)
    manifest = backup.verify_backup(path)
    scripts = backup._scripts()
    previous = scripts.get_revision(manifest.schema_revision).down_revision
    assert isinstance(previous, str)
    with fresh_database("sqlite") as scratch_url:
        scratch = make_app(SQLALCHEMY_DATABASE_URI=scratch_url, ENCRYPTION_KEYS=key)
        with scratch.app_context():
            flask_migrate.upgrade(revision=previous)
            db.engine.dispose()
        older_columns = table_columns(scratch_url)
    positions = {part.name: [i for i, (name, _) in enumerate(part.columns)
                             if name in older_columns.get(part.name, [])]
                 for part in manifest.tables}

    def older_manifest(data: dict[str, Any]) -> None:
        data["schema_revision"] = previous
        data["tables"] = [t for t in data["tables"] if t["name"] in older_columns]
        for entry in data["tables"]:
            entry["columns"] = [c for c in entry["columns"]
                                if c["name"] in older_columns[entry["name"]]]

    older = str(tmp_path / "older.tar")
    rewrite(path, older, manifest=older_manifest,
            rows=lambda table, row: [row[i] for i in positions[table]])
    with fresh_database("sqlite") as url, app_on(url, key) as target, target.app_context():
        if target_state == "migrated to head":
            flask_migrate.upgrade()
        report = backup.restore_backup(None, older, allow=backup.Allow.EMPTY)
        assert report.manifest.schema_revision == previous
        assert report.schema_revision == backup.head_revision()
        assert schema_revision() == backup.head_revision()
        assert_secrets_readable(seeded)


def test_a_database_behind_the_application_is_not_backed_up(source, tmp_path):
    with fresh_database("sqlite") as url, app_on(url, new_key()) as behind, \
            behind.app_context():
        flask_migrate.upgrade(revision="0001")
        with pytest.raises(Conflict, match="run 'flask --app wsgi db upgrade'"), \
                (tmp_path / "x.tar").open("wb") as out:
            backup.write_backup(None, out)


def test_the_commands_create_verify_and_restore_end_to_end(source, key, tmp_path):
    seeded = seed()
    before = table_rows(_DATABASE_URL)
    path = str(tmp_path / "cli.tar")
    created = source.test_cli_runner().invoke(args=["backup", "create", path])
    assert created.exit_code == 0, created.output
    assert f"wrote {path}" in created.output and "schema revision" in created.output
    assert Path(path).stat().st_mode & 0o777 == 0o600
    again = source.test_cli_runner().invoke(args=["backup", "create", path])
    assert again.exit_code == 1 and "exists" in again.output
    verified = source.test_cli_runner().invoke(args=["backup", "verify", path])
    assert verified.exit_code == 0, verified.output
    assert "ok: this instance can restore it" in verified.output
    with fresh_database("sqlite") as url:
        # A command runs in the app context it finds: the source's is pushed already.
        with app_on(url, new_key()) as stranger, stranger.app_context():
            refused = stranger.test_cli_runner().invoke(args=["backup", "restore", path])
            assert refused.exit_code == 1 and MISSING_KEY in refused.output
        with app_on(url, key) as target, target.app_context():
            runner = target.test_cli_runner()
            restored = runner.invoke(args=["backup", "restore", path, "--verbose"])
            assert restored.exit_code == 0, restored.output
            assert "users: 2 rows" in restored.output
            assert table_rows(url) == before
            busy = runner.invoke(args=["backup", "restore", path])
            assert busy.exit_code == 1 and "add --force" in busy.output
            forced = runner.invoke(args=["backup", "restore", path, "--force"])
            assert forced.exit_code == 0, forced.output
            assert_secrets_readable(seeded)


def test_the_manifest_names_each_part_with_its_hash_and_rows(source, tmp_path):
    seed()
    path = take_backup(tmp_path)
    with tarfile.open(path, "r:") as archive:
        names = archive.getnames()
        data = json.loads(archive.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert names[0] == "manifest.json"
    assert data["format"] == "rpcc-backup" and data["format_version"] == 1
    users = next(t for t in data["tables"] if t["name"] == "users")
    assert users["part"] == "tables/users.jsonl.gz" and users["rows"] == 2
    assert len(users["sha256"]) == 64
    assert {"name": "totp_secret", "kind": "secret"} in users["columns"]
    assert names[1:] == [t["part"] for t in data["tables"]]


def test_leases_of_running_processes_are_not_carried_into_a_restore(source, key, tmp_path):
    """A deployment's hold on a node belongs to its process: the restored instance
    starts with every node free, not blocked until a dead holder's lease expires."""
    seeded = seed()
    with node_lease(seeded.node_id, ttl=300, wait=0):
        path = take_backup(tmp_path)
    part = backup.verify_backup(path).part("node_locks")
    assert part is not None and part.runtime and part.rows == 0
    with fresh_database("sqlite") as url, app_on(url, key) as target, target.app_context():
        backup.restore_backup(None, path, allow=backup.Allow.EMPTY)
        with node_lease(seeded.node_id, ttl=300, wait=0):
            pass  # taken at once


def test_a_secret_no_key_reads_any_more_is_counted_and_does_not_stop_a_restore(
        source, key, tmp_path):
    """A secret written under a key since removed from ENCRYPTION_KEYS is unreadable
    in the instance too: the backup counts it, and the readable ones carry it."""
    seeded = seed()
    stale = Fernet(new_key()).encrypt(b"JBSWY3DPEHPK3PXP").decode()
    root = db.session.scalar(select(User).where(User.username == "root"))
    assert root is not None
    db.session.execute(update(User).where(User.id == root.id).values(
        totp_secret=type_coerce(stale, Text())))
    db.session.commit()
    path = take_backup(tmp_path)
    manifest = backup.verify_backup(path)
    assert manifest.unreadable == 1
    assert manifest.keys == {backup.instance_key_fingerprints()[0]: manifest.secrets - 1}
    with fresh_database("sqlite") as url, app_on(url, key) as target, target.app_context():
        backup.restore_backup(None, path, allow=backup.Allow.EMPTY)
        assert_secrets_readable(seeded)
        assert backup_rows(path)["users"] == table_rows(url)["users"]
