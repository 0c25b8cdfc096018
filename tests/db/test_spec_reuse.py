"""A rollout builds a site's spec once and reuses it while the site is unchanged; what
it renders must still follow every change, including writes that do not bump the
site's config version and a new site that takes a deleted site's id."""

from __future__ import annotations

from app.extensions import db as _db
from app.models import Site
from app.services import deployments, sites
from tests import factories
from tests.db.test_manifest_deltas import deploy_without_nodes


def site_file(files: dict[str, str], domain: str) -> str:
    return next(text for path, text in files.items() if path.endswith(f"{domain}.conf"))


def test_a_change_without_a_version_bump_is_still_rendered(app, db, admin):
    node = factories.make_node("edge-reuse")
    site = factories.make_site(admin, "reuse.example.org")
    factories.make_site(admin, "neighbour.example.org")
    before = deployments.version_files(deploy_without_nodes(app, node, site.id))
    assert "X-Quiet" not in site_file(before, "reuse.example.org")

    row = _db.session.get(Site, site.id)
    version = row.config_version
    row.headers = {"X-Quiet": "yes"}
    _db.session.commit()
    assert _db.session.get(Site, site.id).config_version == version

    after = deployments.version_files(deploy_without_nodes(app, node, site.id))
    assert "X-Quiet" in site_file(after, "reuse.example.org")
    assert site_file(after, "neighbour.example.org") == site_file(before,
                                                                   "neighbour.example.org")


def test_a_new_site_under_a_deleted_sites_id_renders_as_itself(app, db, admin):
    node = factories.make_node("edge-reuse-id")
    factories.make_site(admin, "keeper.example.org")
    gone = factories.make_site(admin, "gone.example.org")
    deploy_without_nodes(app, node, gone.id)
    gone_id = gone.id
    sites.delete_site(admin, gone_id)

    # SQLite hands the freed id out again (PostgreSQL does not): the same id and
    # config version as the deleted site's, which a spec kept by those alone would hit.
    newcomer = factories.make_site(admin, "newcomer.example.org")
    files = deployments.version_files(deploy_without_nodes(app, node, newcomer.id))
    assert "newcomer.example.org" in site_file(files, "newcomer.example.org")
    assert not any("gone.example.org" in text for text in files.values())
