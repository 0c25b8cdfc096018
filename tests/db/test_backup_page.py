"""The admin Backups page and the scheduled backups: a download is a whole backup, an
upload is checked completely before a confirmation replaces a new installation, an
instance in use is never replaced from the page, and clients reach none of it."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import flask_migrate
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app.extensions import db
from app.models import JobRun, User
from app.scheduler import find_job
from app.services import backup
from tests import factories
from tests.backups import (
    app_on,
    assert_secrets_readable,
    fresh_database,
    seed,
    table_rows,
)
from tests.backups import key as key  # noqa: F401  (fixture)
from tests.backups import source as source  # noqa: F401  (fixture)
from tests.conftest import _DATABASE_URL, api_headers, login


def signed_in(app: Flask, user: User) -> FlaskClient:
    client = app.test_client()
    login(client, user)
    return client


def upload(client: FlaskClient, content: bytes, name: str = "backup.tar") -> Any:
    return client.post("/admin/backups/restore",
                       data={"file": (io.BytesIO(content), name)},
                       content_type="multipart/form-data")


def staged_token(page: str) -> str:
    marker = 'name="token" type="hidden" value="'
    start = page.index(marker) + len(marker)
    return page[start:page.index('"', start)]


def test_the_page_offers_a_download_the_schedule_and_a_restore(source):
    admin = factories.make_user("admin", "root")
    client = signed_in(source, admin)
    assert 'href="/admin/backups">Backups page</a>' in client.get(
        "/admin/settings").get_data(as_text=True)
    page = client.get("/admin/backups")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Download a backup" in html and "Check backup" in html
    assert backup.instance_key_fingerprints()[0] in html
    assert "Off. Set <code>BACKUP_DIR</code>" in html


def test_a_downloaded_backup_is_whole_and_restorable(source, key):
    seeded = seed()
    client = signed_in(source, db.session.scalar(select(User).where(User.username == "root")))
    before = table_rows(_DATABASE_URL)  # signing in wrote a session and its audit entry
    response = client.post("/admin/backups/download")
    assert response.status_code == 200
    assert response.mimetype == "application/x-tar"
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith("attachment; filename=rpcc-backup-")
    content = response.get_data()
    manifest = backup.verify_backup(io.BytesIO(content))
    assert manifest.part("users") is not None and manifest.rows > 10
    with fresh_database("sqlite") as url, app_on(url, key) as target, target.app_context():
        backup.restore_backup(None, io.BytesIO(content), allow=backup.Allow.EMPTY)
        assert table_rows(url) == before
        assert_secrets_readable(seeded)


def test_an_upload_that_is_not_a_backup_is_refused_under_the_file_field(source):
    admin = factories.make_user("admin", "root")
    client = signed_in(source, admin)
    refused = upload(client, b"just some notes\n", "notes.tar")
    assert refused.status_code == 422
    html = refused.get_data(as_text=True)
    assert "not a backup made by this product" in html and 'aria-invalid="true"' in html
    missing = client.post("/admin/backups/restore", data={},
                          content_type="multipart/form-data")
    assert missing.status_code == 422
    assert "Choose a backup file." in missing.get_data(as_text=True)


def test_an_instance_with_nodes_and_sites_is_never_replaced_from_the_page(source, tmp_path,
                                                                        monkeypatch):
    own_temp = tmp_path / "temp"
    own_temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(own_temp))  # where uploads wait
    seed()
    admin = db.session.scalar(select(User).where(User.username == "root"))
    path = tmp_path / "b.tar"
    backup.write_backup_file(None, str(path))
    refused = upload(signed_in(source, admin), path.read_bytes())
    assert refused.status_code == 422
    html = refused.get_data(as_text=True)
    assert "1 node(s) and 1 site(s)" in html
    assert "backup restore FILE --force" in html
    assert not [n for n in os.listdir(own_temp) if n.startswith(backup.STAGED_PREFIX)]


def test_a_new_installation_is_replaced_after_its_administrator_confirms(source, key,
                                                                         tmp_path):
    seeded = seed()
    before = table_rows(_DATABASE_URL)
    path = tmp_path / "b.tar"
    backup.write_backup_file(None, str(path))
    with fresh_database("sqlite") as url, app_on(url, key) as fresh, fresh.app_context():
        flask_migrate.upgrade()
        first = factories.make_user("admin", "first-admin")
        client = signed_in(fresh, first)
        checked = upload(client, path.read_bytes())
        assert checked.status_code == 200, checked.get_data(as_text=True)
        html = checked.get_data(as_text=True)
        assert "Replace everything with this backup?" in html
        assert "1 account(s)" in html and "<code>users</code>" in html
        token = staged_token(html)
        staged = Path(backup._staged_path(token))
        assert staged.exists() and staged.stat().st_mode & 0o777 == 0o600

        unticked = client.post("/admin/backups/restore/confirm", data={"token": token})
        assert unticked.status_code == 422
        assert "Tick this box to replace everything." in unticked.get_data(as_text=True)
        assert db.session.scalar(select(User).where(User.username == "first-admin"))

        done = client.post("/admin/backups/restore/confirm",
                           data={"token": token, "confirm": "y"})
        assert done.status_code == 302 and done.headers["Location"].endswith("/auth/login")
        assert not staged.exists()
        assert client.get("/admin/backups").status_code == 302  # signed out
        db.session.expire_all()
        assert table_rows(url) == before
        assert_secrets_readable(seeded)
        root = db.session.scalar(select(User).where(User.username == "root"))
        assert root is not None
        assert signed_in(fresh, root).get("/admin/backups").status_code == 200


def test_a_cancelled_upload_is_forgotten(source, key, tmp_path):
    seed()
    path = tmp_path / "b.tar"
    backup.write_backup_file(None, str(path))
    with fresh_database("sqlite") as url, app_on(url, key) as fresh, fresh.app_context():
        flask_migrate.upgrade()
        client = signed_in(fresh, factories.make_user("admin", "first-admin"))
        token = staged_token(upload(client, path.read_bytes()).get_data(as_text=True))
        cancelled = client.post("/admin/backups/restore/cancel", data={"token": token},
                                follow_redirects=True)
        assert "Nothing was restored." in cancelled.get_data(as_text=True)
        assert not Path(backup._staged_path(token)).exists()
        gone = client.post("/admin/backups/restore/confirm",
                           data={"token": token, "confirm": "y"}, follow_redirects=True)
        assert "This upload has expired" in gone.get_data(as_text=True)
        assert db.session.scalar(select(User).where(User.username == "first-admin"))


def test_an_upload_may_be_larger_than_other_requests_up_to_its_own_limit(source, tmp_path,
                                                                         monkeypatch):
    admin = factories.make_user("admin", "root")
    path = tmp_path / "b.tar"
    backup.write_backup_file(None, str(path))
    content = path.read_bytes()
    monkeypatch.setitem(source.config, "MAX_CONTENT_LENGTH", 1024)
    client = signed_in(source, admin)
    assert len(content) > 1024
    checked = upload(client, content)
    assert checked.status_code == 200
    assert "Replace everything with this backup?" in checked.get_data(as_text=True)
    client.post("/admin/backups/restore/cancel",
                data={"token": staged_token(checked.get_data(as_text=True))})
    monkeypatch.setitem(source.config, "BACKUP_UPLOAD_MAX_BYTES", 1024)
    assert upload(client, content).status_code == 413
    too_big_elsewhere = client.post("/admin/users/new", data={"username": "x" * 2000})
    assert too_big_elsewhere.status_code == 413


@pytest.mark.parametrize(("method", "path"), [
    ("get", "/admin/backups"), ("post", "/admin/backups/download"),
    ("post", "/admin/backups/restore"), ("post", "/admin/backups/restore/confirm"),
    ("post", "/admin/backups/restore/cancel"),
    ("get", "/admin/backups/files/rpcc-backup-20250101T000000Z.tar"),
])
def test_a_client_cannot_reach_backups(source, method, path):
    alice = factories.make_user("client", "alice")
    assert getattr(signed_in(source, alice), method)(path).status_code == 403
    anonymous = getattr(source.test_client(), method)(path)
    assert anonymous.status_code == 302 and "/auth/login" in anonymous.headers["Location"]


def test_there_is_no_backup_api(source):
    alice = factories.make_user("client", "alice")
    admin = factories.make_user("admin", "root")
    client = source.test_client()
    for user in (alice, admin):
        for path in ("/api/v1/backups", "/api/v1/backup"):
            assert client.get(path, headers=api_headers(user)).status_code == 404


def test_the_scheduled_job_is_off_without_a_directory_and_keeps_the_newest(source, tmp_path,
                                                                          monkeypatch):
    job = find_job("backups")
    assert job is not None
    monkeypatch.setitem(source.config, "BACKUP_DIR", "")
    assert job.interval(source) == 0
    directory = tmp_path / "backups"
    monkeypatch.setitem(source.config, "BACKUP_DIR", str(directory))
    monkeypatch.setitem(source.config, "BACKUP_KEEP", 2)
    assert job.interval(source) == 86400
    directory.mkdir()
    for name in ("rpcc-backup-20200101T000000Z.tar", "rpcc-backup-20200102T000000Z.tar",
                 "notes.txt"):
        (directory / name).write_bytes(b"old")
    admin = factories.make_user("admin", "root")

    ran = source.test_cli_runner().invoke(args=["jobs", "run", "backups"])
    assert ran.exit_code == 0, ran.output
    run = db.session.scalar(select(JobRun).where(JobRun.job == "backups"))
    assert run is not None and "1 older backup(s) removed" in run.detail
    kept = sorted(os.listdir(directory))
    assert len(kept) == 3 and "notes.txt" in kept
    assert "rpcc-backup-20200102T000000Z.tar" in kept
    newest = max(n for n in kept if n.startswith("rpcc-backup-"))
    assert newest != "rpcc-backup-20200102T000000Z.tar"
    assert (directory / newest).stat().st_mode & 0o777 == 0o600
    assert backup.verify_backup(str(directory / newest)).part("users") is not None

    client = signed_in(source, admin)
    page = client.get("/admin/backups").get_data(as_text=True)
    assert newest in page and "keeps the newest 2" in page
    download = client.get(f"/admin/backups/files/{newest}")
    assert download.status_code == 200
    assert download.get_data() == (directory / newest).read_bytes()
    for name in ("notes.txt", "..%2Fbackups%2Fnotes.txt", "rpcc-backup-20990101T000000Z.tar"):
        assert client.get(f"/admin/backups/files/{name}").status_code == 404
