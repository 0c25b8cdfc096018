"""The admin panel through HTTP: every action on users, nodes, pools, sites and the
audit log, and the role guard on every admin route."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from app.models import AuditLog, Node, NodeStatus, Pool, Site, User
from app.services import audit, nodes, users
from tests import factories
from tests.conftest import login, make_app
from tests.pages import committed, page_text


def admin_rules(app: Flask) -> list[tuple[str, str]]:
    """(method, url) of every admin route, int parameters filled with 1, so that a new
    route is covered without editing the test."""
    out = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("admin."):
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                out.append((method, re.sub(r"<int:\w+>", "1", rule.rule)))
    return out


# ----------------------------------------------------------------------------- guard


def test_client_gets_403_on_every_admin_route(app: Flask, db: Any,
                                              alice_client: FlaskClient) -> None:
    rules = admin_rules(app)
    assert len(rules) >= 30
    for method, url in rules:
        assert alice_client.open(url, method=method).status_code == 403, (method, url)


def test_anonymous_visitor_is_sent_to_login_from_every_admin_route(
    app: Flask, client: FlaskClient
) -> None:
    for method, url in admin_rules(app):
        response = client.open(url, method=method)
        assert response.status_code == 302, (method, url)
        assert "/auth/login" in response.headers["Location"], (method, url)


def test_missing_objects_answer_404(db: Any, admin_client: FlaskClient) -> None:
    for url in ("/admin/users/999/edit", "/admin/nodes/999/edit", "/admin/pools/999/edit",
                "/admin/sites/999", "/admin/sites/999/edit"):
        assert admin_client.get(url).status_code == 404, url
    assert admin_client.post("/admin/sites/999/delete").status_code == 404


def test_every_admin_post_form_carries_a_csrf_token_and_is_refused_without_it(
    db: Any, admin: User, alice: User
) -> None:
    site = factories.make_site(alice)
    node = factories.make_node()
    secured = make_app(WTF_CSRF_ENABLED=True).test_client()
    login_page = secured.get("/auth/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', login_page)[1]
    secured.post("/auth/login", data={"username": "admin", "password": factories.PASSWORD,
                                      "csrf_token": token})
    for url in ("/admin/users", "/admin/nodes", "/admin/pools", f"/admin/sites/{site.id}",
                "/admin/users/new", f"/admin/nodes/{node.id}/edit", "/admin/pools/new",
                f"/admin/sites/{site.id}/edit", "/admin/sites/new"):
        text = secured.get(url).get_data(as_text=True)
        forms = re.findall(r"<form[^>]*method=\"post\".*?</form>", text, re.S)
        assert forms, url
        for form in forms:
            assert 'name="csrf_token"' in form, (url, form[:200])
    response = secured.post(f"/admin/sites/{site.id}/delete")
    assert response.status_code == 400
    assert "CSRF" in page_text(response)
    assert committed(db).get(Site, site.id) is not None


# ----------------------------------------------------------------------------- dashboard


def test_dashboard_shows_health_and_the_latest_ten_audit_entries(
    db: Any, admin: User, alice: User, admin_client: FlaskClient
) -> None:
    from datetime import timedelta

    from app.models import Certificate, CertificateStatus, NodeStatus, SiteStatus
    from app.models.base import utcnow

    online, offline, disabled = (factories.make_node() for _ in range(3))
    online.status, offline.status, disabled.enabled = NodeStatus.ONLINE, NodeStatus.OFFLINE, False
    offline.drifted = True
    deployed, failing, expiring = (factories.make_site(alice, ssl_mode="self_signed")
                                   for _ in range(3))
    deployed.status, failing.status, expiring.blocked = (SiteStatus.DEPLOYED, SiteStatus.FAILED,
                                                         True)
    certificate = {c.site_id: c for c in db.session.scalars(select(Certificate))}
    certificate[failing.id].status = CertificateStatus.FAILED
    certificate[expiring.id].not_after = utcnow() + timedelta(days=3)
    for n in range(12):
        audit.record(admin, f"test.action{n:02d}", "thing", n)
    db.session.commit()

    text = page_text(admin_client.get("/admin/"))
    for label, value in (("online", 1), ("offline", 1), ("drifted", 1), ("disabled", 1),
                         ("deployed", 1), ("failed", 1), ("pending", 1), ("blocked", 1),
                         ("failing", 1), ("expiring within 14 days", 1)):
        assert f'data-figure="{label}">{value}<' in text, label
    assert "Something needs attention." in text and "not running" in text
    assert "test.action11" in text and "test.action02" in text
    assert "test.action01" not in text


@pytest.mark.parametrize(("query", "expected"), [
    ("state=offline", {"node-b"}), ("state=drifted", {"node-b"}),
    ("state=disabled", {"node-c"}), ("state=online", {"node-a"}), ("", {"node-a", "node-b",
                                                                         "node-c"})])
def test_each_node_figure_links_to_the_matching_list(db: Any, admin_client: FlaskClient,
                                                     query: str, expected: set[str]) -> None:
    from app.models import NodeStatus

    a, b, c = (factories.make_node(name) for name in ("node-a", "node-b", "node-c"))
    a.status, b.status, b.drifted, c.enabled = NodeStatus.ONLINE, NodeStatus.OFFLINE, True, False
    db.session.commit()
    text = page_text(admin_client.get(f"/admin/nodes?{query}"))
    assert {name for name in ("node-a", "node-b", "node-c") if f">{name}<" in text} == expected


def test_site_figures_link_to_the_matching_list(db: Any, alice: User,
                                                admin_client: FlaskClient) -> None:
    from app.models import SiteStatus

    ok = factories.make_site(alice, "ok.example.com")
    bad = factories.make_site(alice, "bad.example.com")
    ok.status, bad.status = SiteStatus.DEPLOYED, SiteStatus.FAILED
    db.session.commit()
    failed = page_text(admin_client.get("/admin/sites?state=failed"))
    assert "bad.example.com" in failed and "ok.example.com" not in failed
    assert admin_client.get("/admin/sites?state=bogus").status_code == 422


# ----------------------------------------------------------------------------- users


def test_admin_creates_user_and_the_generated_password_is_shown_once(
    db: Any, admin_client: FlaskClient
) -> None:
    response = admin_client.post("/admin/users/new", data={
        "username": "carol", "email": "carol@example.com", "role": "client", "max_sites": "3"})
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    password = re.search(r'id="password" value="([^"]+)"', page_text(response))[1]
    assert password not in page_text(admin_client.get("/admin/users"))
    carol = users.authenticate("carol", password)
    assert carol is not None and carol.max_sites == 3 and carol.role.value == "client"


def test_admin_creates_user_with_a_chosen_password(db: Any, admin_client: FlaskClient) -> None:
    response = admin_client.post("/admin/users/new", data={
        "username": "dave", "email": "dave@example.com", "role": "admin",
        "password": "a-long-passphrase-1"}, follow_redirects=True)
    assert 'id="password"' not in page_text(response)
    assert users.authenticate("dave", "a-long-passphrase-1").is_admin


def test_invalid_new_user_is_shown_under_its_fields_and_not_stored(
    db: Any, alice: User, admin_client: FlaskClient
) -> None:
    response = admin_client.post("/admin/users/new", data={
        "username": "alice", "email": "not-an-email", "role": "client", "password": "short"})
    assert response.status_code == 422
    text = page_text(response)
    assert "invalid-feedback" in text
    assert "Password must be at least 12 characters" in text
    assert committed(db).scalar(select(func.count(User.id))) == 2


def test_user_list_searches_filters_by_role_and_shows_site_counts(
    db: Any, admin: User, alice: User, bob: User, admin_client: FlaskClient
) -> None:
    factories.make_site(alice)
    factories.make_site(alice)
    text = page_text(admin_client.get("/admin/users?role=client"))
    assert ">alice</a>" in text and ">bob</a>" in text and ">admin</a>" not in text
    assert "2 of 10" in text and "0 of 10" in text
    text = page_text(admin_client.get("/admin/users?q=BOB"))
    assert ">bob</a>" in text and ">alice</a>" not in text


def test_admin_edits_a_user(db: Any, alice: User, admin_client: FlaskClient) -> None:
    form = admin_client.get(f"/admin/users/{alice.id}/edit").get_data(as_text=True)
    assert 'value="alice@example.com"' in form and 'name="password"' not in form
    response = admin_client.post(f"/admin/users/{alice.id}/edit", data={
        "username": "alice2", "email": "a2@example.com", "role": "admin", "max_sites": "25",
        "is_active": "y"})
    assert response.status_code == 302
    user = committed(db).get(User, alice.id)
    assert (user.username, user.email, user.role.value, user.max_sites, user.is_active) == (
        "alice2", "a2@example.com", "admin", 25, True)


def test_admin_cannot_demote_own_account(db: Any, admin: User,
                                         admin_client: FlaskClient) -> None:
    response = admin_client.post(f"/admin/users/{admin.id}/edit", data={
        "username": "admin", "email": admin.email, "role": "client", "max_sites": "10",
        "is_active": "y"}, follow_redirects=True)
    # The choice is not offered; a forged one is refused under its field.
    assert response.status_code == 422 and "Not a valid choice" in page_text(response)
    assert committed(db).get(User, admin.id).role.value == "admin"
    assert committed(db).get(User, admin.id).is_admin


def test_admin_deactivates_and_reactivates_a_user(
    db: Any, alice: User, admin_client: FlaskClient, client: FlaskClient
) -> None:
    login(client, alice)
    admin_client.post(f"/admin/users/{alice.id}/deactivate")
    assert committed(db).get(User, alice.id).is_active is False
    assert "/auth/login" in client.get("/client/").headers["Location"]
    assert client.post("/auth/login", data={"username": "alice",
                                            "password": factories.PASSWORD}).status_code == 200
    response = admin_client.post(f"/admin/users/{alice.id}/activate", follow_redirects=True)
    assert "alice can sign in again" in page_text(response)
    login(client, alice)


def test_admin_resets_a_password_shown_once_and_old_sessions_end(
    db: Any, alice: User, admin_client: FlaskClient, client: FlaskClient
) -> None:
    login(client, alice)
    response = admin_client.post(f"/admin/users/{alice.id}/reset-password",
                                 follow_redirects=True)
    password = re.search(r'id="password" value="([^"]+)"', page_text(response))[1]
    assert response.headers["Cache-Control"] == "no-store"
    assert password not in page_text(admin_client.get("/admin/users"))
    assert "/auth/login" in client.get("/client/").headers["Location"]
    assert users.authenticate("alice", factories.PASSWORD) is None
    assert users.authenticate("alice", password) is not None


def test_admin_deletes_a_user(db: Any, bob: User, admin_client: FlaskClient) -> None:
    response = admin_client.post(f"/admin/users/{bob.id}/delete", follow_redirects=True)
    assert "User deleted." in page_text(response)
    assert committed(db).get(User, bob.id) is None


def test_deleting_a_user_who_owns_sites_is_refused_with_a_message(
    db: Any, alice: User, admin_client: FlaskClient
) -> None:
    factories.make_site(alice, "kept.example.com")
    response = admin_client.post(f"/admin/users/{alice.id}/delete", follow_redirects=True)
    assert "alice still owns sites: kept.example.com" in page_text(response)
    assert committed(db).get(User, alice.id) is not None


# ----------------------------------------------------------------------------- nodes


NODE_FORM = {
    "name": "edge-1", "host": "10.0.0.21", "ssh_port": "2222", "ssh_user": "deploy",
    "proxy_type": "caddy", "pool": "default", "config_dir": "/etc/caddy/sites",
    "test_command": "caddy validate --config /etc/caddy/Caddyfile",
    "reload_command": "systemctl reload caddy", "listen_address": "10.0.0.21",
    "http_port": "8080", "https_port": "8443", "glances_url": "http://10.0.0.21:61208",
    "enabled": "y",
}


def test_admin_creates_a_node_with_every_field(db: Any, admin_client: FlaskClient) -> None:
    key = factories.ssh_key()
    response = admin_client.post("/admin/nodes/new", data={**NODE_FORM, "ssh_private_key": key})
    assert response.status_code == 302, page_text(response)
    node = committed(db).scalar(select(Node).where(Node.name == "edge-1"))
    assert (node.host, node.ssh_port, node.ssh_user, node.proxy_type.value, node.pool.name,
            node.config_dir, node.test_command, node.reload_command, node.listen_address,
            node.http_port, node.https_port, node.glances_url, node.enabled) == (
        "10.0.0.21", 2222, "deploy", "caddy", "default", "/etc/caddy/sites",
        "caddy validate --config /etc/caddy/Caddyfile", "systemctl reload caddy",
        "10.0.0.21", 8080, 8443, "http://10.0.0.21:61208", True)
    assert node.ssh_private_key.strip() == key.strip()


def test_new_node_with_blank_paths_gets_the_engine_defaults(
    db: Any, admin_client: FlaskClient
) -> None:
    admin_client.post("/admin/nodes/new", data={
        "name": "plain", "host": "10.0.0.9", "proxy_type": "nginx", "pool": "default",
        "ssh_password": "hunter2-but-longer", "enabled": "y"})
    node = committed(db).scalar(select(Node).where(Node.name == "plain"))
    assert (node.ssh_port, node.ssh_user, node.config_dir, node.http_port) == (
        22, "root", "/etc/nginx/rpcc.d", 80)
    assert node.ssh_password == "hunter2-but-longer"


def test_node_without_key_or_password_is_a_field_error(
    db: Any, admin_client: FlaskClient
) -> None:
    response = admin_client.post("/admin/nodes/new", data={**NODE_FORM, "ssh_port": "70000"})
    assert response.status_code == 422
    text = page_text(response)
    assert "a private key or a password is required" in text
    assert "must be a number between 1 and 65535" in text
    assert committed(db).scalar(select(func.count(Node.id))) == 0


def test_node_edit_form_never_shows_secrets_and_blank_keeps_them(
    db: Any, admin_client: FlaskClient
) -> None:
    key = factories.ssh_key()
    node = factories.make_node("edge-2", ssh_private_key=key, ssh_password="old-ssh-password")
    text = admin_client.get(f"/admin/nodes/{node.id}/edit").get_data(as_text=True)
    body = key.splitlines()[1]
    assert body not in text and "old-ssh-password" not in text
    assert 'value="edge-2"' in text
    response = admin_client.post(f"/admin/nodes/{node.id}/edit", data={
        **NODE_FORM, "name": "edge-2b", "ssh_private_key": "", "ssh_password": ""})
    assert response.status_code == 302, page_text(response)
    node = committed(db).get(Node, node.id)
    assert node.name == "edge-2b" and node.proxy_type.value == "caddy"
    assert node.ssh_private_key.strip() == key.strip()
    assert node.ssh_password == "old-ssh-password"


def test_node_edit_replaces_the_key_when_a_new_one_is_given(
    db: Any, admin_client: FlaskClient
) -> None:
    node = factories.make_node("edge-3")
    new_key = factories.ssh_key()
    admin_client.post(f"/admin/nodes/{node.id}/edit", data={
        **NODE_FORM, "name": "edge-3", "ssh_private_key": new_key})
    assert committed(db).get(Node, node.id).ssh_private_key.strip() == new_key.strip()


def test_admin_disables_enables_and_drains_a_node(db: Any, admin_client: FlaskClient) -> None:
    node = factories.make_node("edge-4")
    admin_client.post(f"/admin/nodes/{node.id}/disable")
    assert committed(db).get(Node, node.id).enabled is False
    admin_client.post(f"/admin/nodes/{node.id}/enable")
    assert committed(db).get(Node, node.id).enabled is True
    response = admin_client.post(f"/admin/nodes/{node.id}/drain", follow_redirects=True)
    assert "edge-4 is draining" in page_text(response)
    node = committed(db).get(Node, node.id)
    assert (node.enabled, node.status) == (False, NodeStatus.DRAINING)


def test_deleting_a_node_that_serves_active_sites_is_refused_naming_them(
    db: Any, alice: User, admin_client: FlaskClient
) -> None:
    node = factories.make_node("edge-5")
    factories.make_site(alice, "live.example.com")
    response = admin_client.post(f"/admin/nodes/{node.id}/delete", follow_redirects=True)
    text = page_text(response)
    assert "node edge-5 still serves active sites: live.example.com" in text
    assert 'class="alert alert-danger"' in response.get_data(as_text=True)
    assert committed(db).get(Node, node.id) is not None


def test_admin_deletes_an_idle_node(db: Any, admin_client: FlaskClient) -> None:
    node = factories.make_node("edge-6")
    response = admin_client.post(f"/admin/nodes/{node.id}/delete", follow_redirects=True)
    assert "Node deleted." in page_text(response)
    assert committed(db).get(Node, node.id) is None


def test_node_list_filters_by_pool_and_name(db: Any, admin: User,
                                            admin_client: FlaskClient) -> None:
    nodes.create_pool(admin, "eu")
    factories.make_node("eu-node", pool="eu")
    factories.make_node("us-node")
    text = page_text(admin_client.get("/admin/nodes?pool=eu"))
    assert "eu-node" in text and "us-node" not in text
    text = page_text(admin_client.get("/admin/nodes?q=us"))
    assert "us-node" in text and "eu-node" not in text


# ----------------------------------------------------------------------------- pools


def test_admin_creates_edits_and_deletes_a_pool(db: Any, admin_client: FlaskClient) -> None:
    admin_client.post("/admin/pools/new", data={"name": "asia", "description": "Tokyo"})
    pool = committed(db).scalar(select(Pool).where(Pool.name == "asia"))
    assert pool.description == "Tokyo"
    admin_client.post(f"/admin/pools/{pool.id}/edit", data={"name": "apac",
                                                            "description": "Tokyo, Sydney"})
    pool = committed(db).get(Pool, pool.id)
    assert (pool.name, pool.description) == ("apac", "Tokyo, Sydney")
    response = admin_client.post(f"/admin/pools/{pool.id}/delete", follow_redirects=True)
    assert "Pool deleted." in page_text(response)
    assert committed(db).get(Pool, pool.id) is None


def test_duplicate_pool_name_is_a_field_error(db: Any, admin_client: FlaskClient) -> None:
    response = admin_client.post("/admin/pools/new", data={"name": "default"})
    assert response.status_code == 422
    assert "a pool with this name exists" in page_text(response)


def test_deleting_a_pool_that_is_not_empty_is_refused(
    db: Any, alice: User, admin_client: FlaskClient
) -> None:
    factories.make_node()
    factories.make_site(alice)
    pool_id = db.session.scalar(select(Pool.id).where(Pool.name == "default"))
    text = page_text(admin_client.get("/admin/pools"))
    assert re.search(r">default<.*?>1</a>.*?>1</a>", text, re.S)
    response = admin_client.post(f"/admin/pools/{pool_id}/delete", follow_redirects=True)
    assert "pool default still has 1 node(s) and 1 site(s)" in page_text(response)
    assert committed(db).get(Pool, pool_id) is not None


# ----------------------------------------------------------------------------- sites


def site_form(**fields: str) -> dict[str, str]:
    data = {"domain": "admin-made.example.com", "backends": "127.0.0.1:8080",
            "backend_protocol": "http", "pool": "default", "ssl_mode": "none", "http2": "y",
            "waf_level": "off", "cache_ttl": "300", "geo_mode": "off",
            "rate_limit_burst": "0"}
    data.update(fields)
    return data


def test_admin_site_list_filters_by_owner_query_and_pool(
    db: Any, admin: User, alice: User, bob: User, admin_client: FlaskClient
) -> None:
    nodes.create_pool(admin, "eu")
    factories.make_site(alice, "alice.example.com")
    factories.make_site(bob, "bob.example.com", pool="eu")
    text = page_text(admin_client.get("/admin/sites"))
    assert "alice.example.com" in text and "bob.example.com" in text
    text = page_text(admin_client.get(f"/admin/sites?owner_id={alice.id}"))
    assert "alice.example.com" in text and "bob.example.com" not in text
    text = page_text(admin_client.get("/admin/sites?pool=eu"))
    assert "bob.example.com" in text and "alice.example.com" not in text
    text = page_text(admin_client.get("/admin/sites?q=alice"))
    assert "alice.example.com" in text and "bob.example.com" not in text


def test_admin_creates_a_site_for_a_chosen_owner(
    db: Any, alice: User, admin_client: FlaskClient
) -> None:
    form = page_text(admin_client.get(f"/admin/sites/new?owner_id={alice.id}"))
    assert f'<option selected value="{alice.id}">alice (client)</option>' in form
    response = admin_client.post("/admin/sites/new", data=site_form(owner_id=str(alice.id)))
    assert response.status_code == 302, page_text(response)
    site = committed(db).scalar(select(Site).where(Site.domain == "admin-made.example.com"))
    assert site.owner_id == alice.id


def test_admin_edits_a_clients_site_and_moves_it_to_another_owner(
    db: Any, alice: User, bob: User, admin_client: FlaskClient
) -> None:
    site = factories.make_site(alice, "moving.example.com")
    response = admin_client.post(f"/admin/sites/{site.id}/edit", data=site_form(
        domain="moved.example.com", owner_id=str(bob.id), waf_level="high"))
    assert response.status_code == 302, page_text(response)
    site = committed(db).get(Site, site.id)
    assert (site.domain, site.owner_id, site.waf_level.value) == (
        "moved.example.com", bob.id, "high")


def test_site_detail_shows_owner_and_settings(db: Any, alice: User,
                                              admin_client: FlaskClient) -> None:
    site = factories.make_site(alice, "shown.example.com", headers={"X-Env": "prod"})
    text = page_text(admin_client.get(f"/admin/sites/{site.id}"))
    assert "Owner:" in text and ">alice<" in text
    assert "X-Env: prod" in text and "127.0.0.1:8080" in text


def test_admin_blocks_a_site_with_a_reason_and_unblocks_it(
    db: Any, alice: User, admin_client: FlaskClient
) -> None:
    site = factories.make_site(alice, "bad.example.com")
    response = admin_client.post(f"/admin/sites/{site.id}/block",
                                 data={"blocked_reason": "phishing reported"},
                                 follow_redirects=True)
    assert "Blocked: phishing reported" in page_text(response)
    site = committed(db).get(Site, site.id)
    assert (site.blocked, site.blocked_reason) == (True, "phishing reported")
    admin_client.post(f"/admin/sites/{site.id}/unblock")
    site = committed(db).get(Site, site.id)
    assert (site.blocked, site.blocked_reason) == (False, "")


def test_blocking_without_a_reason_is_a_field_error(
    db: Any, alice: User, admin_client: FlaskClient
) -> None:
    site = factories.make_site(alice)
    response = admin_client.post(f"/admin/sites/{site.id}/block", data={"blocked_reason": ""})
    assert response.status_code == 422
    assert "say why the site is blocked" in page_text(response)
    assert committed(db).get(Site, site.id).blocked is False


def test_admin_blocks_through_the_site_form(db: Any, alice: User,
                                            admin_client: FlaskClient) -> None:
    site = factories.make_site(alice, "form-block.example.com")
    admin_client.post(f"/admin/sites/{site.id}/edit", data=site_form(
        domain="form-block.example.com", owner_id=str(alice.id), blocked="y",
        blocked_reason="abuse"))
    assert committed(db).get(Site, site.id).blocked_reason == "abuse"


def test_admin_deletes_a_site(db: Any, alice: User, admin_client: FlaskClient) -> None:
    site = factories.make_site(alice)
    response = admin_client.post(f"/admin/sites/{site.id}/delete", follow_redirects=True)
    assert "Site deleted." in page_text(response)
    assert committed(db).get(Site, site.id) is None


def test_site_quota_of_the_owner_is_flashed_when_admin_creates_too_many(
    db: Any, admin_client: FlaskClient
) -> None:
    carol = factories.make_user("client", "carol", max_sites=0)
    response = admin_client.post("/admin/sites/new", data=site_form(owner_id=str(carol.id)),
                                 follow_redirects=True)
    assert "site quota reached: carol may have 0 site(s)" in page_text(response)


# ----------------------------------------------------------------------------- audit


def test_audit_log_filters_by_user_action_object_type_and_dates(
    db: Any, admin: User, alice: User, admin_client: FlaskClient
) -> None:
    old = audit.record(alice, "site.create", "site", 1, {"domain": "old.example.com"})
    old.at = datetime(2020, 5, 1, 12, tzinfo=UTC)
    audit.record(alice, "site.create", "site", 2, {"domain": "new.example.com"})
    audit.record(admin, "node.create", "node", 3, {"name": "n-3"})
    db.session.commit()
    text = page_text(admin_client.get("/admin/audit?username=alice"))
    assert "old.example.com" in text and "new.example.com" in text and "n-3" not in text
    text = page_text(admin_client.get("/admin/audit?action=node.create"))
    assert "n-3" in text and "example.com" not in text
    text = page_text(admin_client.get("/admin/audit?object_type=site&until=2020-05-01"))
    assert "old.example.com" in text and "new.example.com" not in text
    text = page_text(admin_client.get("/admin/audit?since=2020-05-02&username=alice"))
    assert "new.example.com" in text and "old.example.com" not in text
    assert '<option value="node.create">' in text


def test_audit_log_rejects_an_invalid_date(db: Any, admin_client: FlaskClient) -> None:
    response = admin_client.get("/admin/audit?since=yesterday")
    assert response.status_code == 422
    assert "Not a valid date value" in page_text(response)


def test_audit_log_paginates(db: Any, admin: User, admin_client: FlaskClient) -> None:
    for n in range(60):
        audit.record(admin, "test.bulk", "thing", n, {"n": f"entry-{n:02d}"})
    db.session.commit()
    first = page_text(admin_client.get("/admin/audit?action=test.bulk"))
    assert "entry-59" in first and "entry-09" not in first
    assert "Page 1 of 2 (60)" in first
    assert "/admin/audit?action=test.bulk&amp;page=2" in admin_client.get(
        "/admin/audit?action=test.bulk").get_data(as_text=True)
    second = page_text(admin_client.get("/admin/audit?action=test.bulk&page=2"))
    assert "entry-09" in second and "entry-59" not in second
    assert committed(db).scalar(select(func.count(AuditLog.id))) >= 60


def test_refused_actions_on_ones_own_account_are_not_offered(
    db: Any, admin: User, alice: User, admin_client: FlaskClient
) -> None:
    listing = page_text(admin_client.get("/admin/users"))
    assert f"/admin/users/{alice.id}/deactivate" in listing
    assert f"/admin/users/{admin.id}/deactivate" not in listing
    assert f"/admin/users/{admin.id}/delete" not in listing
    answer = admin_client.get(f"/admin/users/{admin.id}/edit")
    assert answer.status_code == 200
    form = page_text(answer)
    assert 'name="is_active"' not in form and 'value="client"' not in form
    response = admin_client.post(f"/admin/users/{admin.id}/edit", data={
        "username": admin.username, "email": admin.email, "role": "admin", "max_sites": "5"})
    assert response.status_code == 302
    assert db.session.get(User, admin.id).is_active


def test_lists_sort_as_asked(db: Any, admin: User, admin_client: FlaskClient) -> None:
    from app.models.base import utcnow

    older, newer = factories.make_node("a-older"), factories.make_node("b-newer")
    older.last_seen, newer.last_seen = datetime(2026, 1, 1, tzinfo=UTC), utcnow()
    db.session.commit()
    by_name = page_text(admin_client.get("/admin/nodes"))
    recent = page_text(admin_client.get("/admin/nodes?sort=-last_seen"))
    assert by_name.index(">a-older<") < by_name.index(">b-newer<")
    assert recent.index(">b-newer<") < recent.index(">a-older<")
    assert admin_client.get("/admin/nodes?sort=password").status_code == 422
    assert admin_client.get("/admin/users?sort=-last_login").status_code == 200
    assert admin_client.get("/admin/sites?sort=-updated").status_code == 200


def test_pools_dns_providers_and_tokens_can_be_searched(db: Any, admin: User, alice: User,
                                                       admin_client: FlaskClient,
                                                       app: Flask) -> None:
    from app.services import tokens

    nodes.create_pool(admin, "edge-eu", "Europe")
    nodes.create_pool(admin, "edge-us", "Americas")
    text = page_text(admin_client.get("/admin/pools?q=europe"))
    assert ">edge-eu<" in text and ">edge-us<" not in text
    assert admin_client.get("/admin/dns-providers?q=nothing").status_code == 200
    tokens.create_token(alice, "deploy script")
    tokens.create_token(alice, "nightly-report")
    browser = app.test_client()
    login(browser, alice)
    listed = page_text(browser.get("/client/tokens?q=deploy"))
    assert "deploy script" in listed and "nightly-report" not in listed
