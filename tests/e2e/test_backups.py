"""An administrator downloads a backup from the Backups page, is told why a file that
is not one cannot be restored, and restores the download into a new installation,
where the accounts of the backup then sign in."""

from __future__ import annotations

import json
import secrets
import shutil
import tarfile
import tempfile
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from tests.components import AppServer, app_env, flask_cli
from tests.e2e.conftest import Product, make_client, sign_in


@pytest.fixture()
def new_installation(product: Product) -> Iterator[tuple[str, str]]:
    """A second product with a database of its own and only its first administrator
    (``first``), holding the main product's keys; its background jobs are off, so
    that the fleet it restores is never touched from it.  Yields its URL and the
    administrator's password."""
    directory = tempfile.mkdtemp(prefix="rpcc-e2e-new-")
    env = app_env(f"sqlite:///{directory}/rpcc.db", SCHEDULER_ENABLED="0",
                  ENCRYPTION_KEYS=product.env["ENCRYPTION_KEYS"])
    flask_cli(env, "db", "upgrade")
    password = secrets.token_urlsafe(16)
    flask_cli(env, "users", "create", "--username", "first", "--email", "first@example.test",
              "--role", "admin", "--password-stdin", stdin=password)
    server = AppServer(env)
    try:
        yield server.url, password
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_a_backup_is_downloaded_checked_and_restored_into_a_new_installation(
        journey_factory, product, shared_pool, new_installation, tmp_path):
    client_password = make_client(product, "kai")
    journey = journey_factory("main")
    page = journey.go("/")
    sign_in(journey, "admin", product.admin_password)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Settings").click()
    page.get_by_role("link", name="Backups page").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Backups")
    journey.check("backups")

    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download a backup").click()
    download = download_info.value
    assert download.suggested_filename.startswith("rpcc-backup-")
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    with tarfile.open(saved, "r:") as archive:
        assert archive.getnames()[0] == "manifest.json"
        manifest = json.loads(archive.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert manifest["format"] == "rpcc-backup"
    assert next(t for t in manifest["tables"] if t["name"] == "users")["rows"] >= 2

    # A file that is not a backup is refused under the field, and nothing else happens.
    notes = tmp_path / "notes.tar"
    notes.write_text("not a backup at all\n")
    page.get_by_label("Backup file").set_input_files(str(notes))
    page.get_by_role("button", name="Check backup").click()
    field_error = page.locator("#file-error")
    expect(field_error).to_contain_text("this is not a backup made by this product")
    expect(page.get_by_label("Backup file")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#error-summary")).to_contain_text("Backup file")
    journey.check("restore refused")
    page.get_by_role("button", name="Check backup").click()
    expect(page.locator("#file-error")).to_contain_text("Choose a backup file.")

    # The main product has a node (the shared pool's): the page never replaces it.
    page.get_by_label("Backup file").set_input_files(str(saved))
    page.get_by_role("button", name="Check backup").click()
    expect(page.locator("#error-summary")).to_contain_text(
        "from the web page a backup replaces only an instance without nodes and sites")

    url, password = new_installation
    fresh = journey_factory("new")
    page = fresh.page
    page.goto(f"{url}/auth/login")
    sign_in(fresh, "first", password)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Settings").click()
    page.get_by_role("link", name="Backups page").click()
    page.get_by_label("Backup file").set_input_files(str(saved))
    page.get_by_role("button", name="Check backup").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Replace everything with this backup?")
    expect(page.locator("#backup-summary")).to_contain_text(manifest["schema_revision"])
    expect(page.get_by_role("alert")).to_contain_text("1 account(s)")
    fresh.check("restore confirmation")
    page.get_by_role("button", name="Replace everything with this backup").click()
    expect(page.locator("#confirm-error")).to_contain_text(
        "Tick this box to replace everything.")
    page.get_by_label("Replace every account").check()
    page.get_by_role("button", name="Replace everything with this backup").click()
    expect(page).to_have_url(f"{url}/auth/login")
    expect(page.get_by_role("status")).to_contain_text("Restored the backup made")
    fresh.check("restored")

    sign_in(fresh, "first", password)
    expect(page.locator("#error-summary")).to_contain_text("Invalid username or password.")
    sign_in(fresh, "kai", client_password)
    expect(page.get_by_role("navigation", name="Main").get_by_role(
        "link", name="My sites")).to_be_visible()
