"""The client panel through HTTP: own sites with every setting, quota, profile and
tokens; other tenants' sites answer 404 and anonymous visitors go to the login page."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from app.models import ApiToken, Site, User
from app.services import nodes, sites, tokens, users
from tests import factories
from tests.conftest import login, make_app
from tests.pages import page_text


def site_form(**fields: str | None) -> dict[str, str]:
    """A complete site form as a browser sends it; None leaves a checkbox unticked."""
    data: dict[str, str | None] = {
        "domain": "shop.example.com", "aliases": "", "backends": "127.0.0.1:8080",
        "backend_protocol": "http", "pool": "default", "ssl_mode": "none", "http2": "y",
        "waf_level": "off", "cache_ttl": "300", "geo_mode": "off", "geo_countries": "",
        "ip_allow": "", "ip_deny": "", "basic_auth": "", "rate_limit_rps": "",
        "rate_limit_burst": "0", "headers": "",
    }
    data.update(fields)
    return {key: value for key, value in data.items() if value is not None}


def site_count(db: Any) -> int:
    db.session.rollback()  # requests share the test's session: look at what was committed
    return db.session.scalar(select(func.count(Site.id))) or 0


EVERY_SETTING = site_form(
    domain="shop.example.com",
    aliases="example.org\n\n*.example.org",
    backends="10.0.0.5:8080 3\n[2001:db8::1]:443",
    backend_protocol="https", pool="edge", ssl_mode="letsencrypt", acme_challenge="dns-01",
    force_https="y", hsts="y", http2=None, websocket="y", waf_level="medium",
    cache_enabled="y", cache_ttl="600",
    geo_mode="deny", geo_countries="cn, ru kp", ip_allow="10.0.0.0/8\n2001:db8::/32",
    ip_deny="192.0.2.7", basic_auth="ops:correct-horse\nviewer: another-pass",
    rate_limit_rps="20", rate_limit_burst="40",
    headers="X-Frame-Options: DENY\nX-Team: web ops",
)
EVERY_SETTING_STORED = {
    "domain": "shop.example.com",
    "aliases": ["example.org", "*.example.org"],
    "backends": [{"host": "10.0.0.5", "port": 8080, "weight": 3},
                 {"host": "2001:db8::1", "port": 443, "weight": 1}],
    "backend_protocol": "https", "pool": "edge", "ssl_mode": "letsencrypt",
    "acme_challenge": "dns-01", "force_https": True, "hsts": True, "http2": False,
    "websocket": True,
    "waf_level": "medium", "cache": {"enabled": True, "ttl": 600},
    "geo": {"mode": "deny", "countries": ["CN", "RU", "KP"]},
    "ip_allow": ["10.0.0.0/8", "2001:db8::/32"], "ip_deny": ["192.0.2.7/32"],
    "basic_auth": [{"username": "ops"}, {"username": "viewer"}],
    "rate_limit": {"requests_per_second": 20, "burst": 40},
    "headers": {"X-Frame-Options": "DENY", "X-Team": "web ops"},
    "blocked": False, "blocked_reason": "",
}


@pytest.fixture()
def edge_pool(admin: User) -> str:
    """A pool with a node: clients can choose only pools that would serve the site."""
    name = nodes.create_pool(admin, "edge", "edge nodes").name
    factories.make_node(pool=name)
    return name


def stored(site: Site) -> dict[str, Any]:
    data = sites.site_to_dict(site, admin=False)
    return {key: data[key] for key in EVERY_SETTING_STORED}


# ----------------------------------------------------------------------------- access


def client_rules(app: Flask, argument: str | None = None) -> list[tuple[str, str, str]]:
    """(method, rule, endpoint) of every client panel route, so new routes are covered."""
    out = []
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("client.") or (argument and argument not in rule.arguments):
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            out.append((method, rule.rule, rule.endpoint))
    return out


def test_anonymous_visitor_is_sent_to_login_from_every_client_route(
    app: Flask, client: FlaskClient
) -> None:
    rules = client_rules(app)
    assert len(rules) >= 10
    for method, rule, _ in rules:
        url = re.sub(r"<int:\w+>", "1", rule)
        response = client.open(url, method=method)
        assert response.status_code == 302, (method, url)
        assert "/auth/login" in response.headers["Location"], (method, url)


def test_every_client_site_route_answers_404_for_another_clients_site(
    app: Flask, db: Any, alice_client: FlaskClient, bob: User
) -> None:
    bobs = factories.make_site(bob, "bob.example.com")
    rules = client_rules(app, "site_id")
    assert {endpoint for _, _, endpoint in rules} >= {
        "client.site_detail", "client.site_edit", "client.site_delete"}
    for method, rule, _ in rules:
        url = rule.replace("<int:site_id>", str(bobs.id))
        response = alice_client.open(url, method=method, data=site_form(domain="x.example.com"))
        assert response.status_code == 404, (method, url)
    db.session.rollback()
    assert db.session.get(Site, bobs.id).domain == "bob.example.com"


def test_client_dashboard_lists_only_own_sites_with_status_and_quota(
    db: Any, alice: User, bob: User, alice_client: FlaskClient
) -> None:
    factories.make_site(alice, "alice-one.example.com")
    factories.make_site(alice, "alice-two.example.com")
    factories.make_site(bob, "bob.example.com")
    text = page_text(alice_client.get("/client/"))
    assert "alice-one.example.com" in text and "alice-two.example.com" in text
    assert "bob.example.com" not in text
    assert "2 of 10 sites used" in text
    assert "pending" in text


def test_client_dashboard_paginates_sites(db: Any, admin: User, alice: User,
                                          alice_client: FlaskClient) -> None:
    users.update_user(admin, alice.id, {"max_sites": 60})
    for n in range(51):
        factories.make_site(alice, f"s{n:02d}.example.com")
    first = page_text(alice_client.get("/client/"))
    assert "s00.example.com" in first and "s50.example.com" not in first
    assert "Page 1 of 2 (51)" in first
    second = page_text(alice_client.get("/client/?page=2"))
    assert "s50.example.com" in second and "s00.example.com" not in second


def test_every_client_post_form_carries_a_csrf_token_and_is_refused_without_it(
    db: Any, alice: User
) -> None:
    site = factories.make_site(alice)
    tokens.create_token(alice, "listed")
    secured = make_app(WTF_CSRF_ENABLED=True).test_client()
    login_page = secured.get("/auth/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', login_page)[1]
    secured.post("/auth/login", data={"username": "alice", "password": factories.PASSWORD,
                                      "csrf_token": token})
    for url in ("/client/", f"/client/sites/{site.id}", f"/client/sites/{site.id}/edit",
                "/client/sites/new", "/client/tokens", "/client/profile"):
        text = secured.get(url).get_data(as_text=True)
        forms = re.findall(r"<form[^>]*method=\"post\".*?</form>", text, re.S)
        assert forms, url
        for form in forms:
            assert 'name="csrf_token"' in form, (url, form[:200])
    response = secured.post(f"/client/sites/{site.id}/delete")
    assert response.status_code == 400
    assert site_count(db) == 1


# ----------------------------------------------------------------------------- sites


def test_client_creates_site_with_every_setting(
    db: Any, alice: User, alice_client: FlaskClient, edge_pool: str
) -> None:
    response = alice_client.post("/client/sites/new", data=EVERY_SETTING)
    assert response.status_code == 302, page_text(response)
    site = db.session.scalar(select(Site).where(Site.domain == "shop.example.com"))
    assert site.owner_id == alice.id
    assert stored(site) == EVERY_SETTING_STORED
    assert {u.username for u in site.basic_auth_users} == {"ops", "viewer"}


def test_site_detail_shows_every_setting_but_never_a_password(
    db: Any, alice_client: FlaskClient, edge_pool: str
) -> None:
    alice_client.post("/client/sites/new", data=EVERY_SETTING)
    site_id = db.session.scalar(select(Site.id).where(Site.domain == "shop.example.com"))
    text = page_text(alice_client.get(f"/client/sites/{site_id}"))
    for fragment in ("shop.example.com", "*.example.org", "10.0.0.5:8080", "weight 3",
                     "[2001:db8::1]:443", "https", "edge", "letsencrypt", "medium",
                     "for 600 s", "deny: CN, RU, KP", "10.0.0.0/8", "2001:db8::/32",
                     "192.0.2.7/32", "ops", "viewer", "20 requests/s, burst 40",
                     "X-Frame-Options: DENY", "X-Team: web ops"):
        assert fragment in text, fragment
    assert "correct-horse" not in text and "another-pass" not in text


def test_edit_form_is_prefilled_with_basic_auth_usernames_but_no_passwords(
    db: Any, alice: User, alice_client: FlaskClient
) -> None:
    site = factories.make_site(
        alice, "shop.example.com", basic_auth=[{"username": "ops", "password": "s3cret-pass"}],
        backends=[{"host": "::1", "port": 8080, "weight": 2}],
        headers={"X-Team": "web"}, rate_limit={"requests_per_second": 5, "burst": 1},
    )
    text = page_text(alice_client.get(f"/client/sites/{site.id}/edit"))
    assert re.search(r'name="basic_auth"[^>]*>\s*ops</textarea>', text)
    assert "s3cret-pass" not in text
    assert "[::1]:8080 2" in text and "X-Team: web" in text
    assert 'name="rate_limit_rps" type="number" value="5"' in text
    assert 'name="blocked"' not in text and 'name="owner_id"' not in text


def test_client_edits_every_setting(db: Any, alice: User, alice_client: FlaskClient,
                                    edge_pool: str) -> None:
    site = factories.make_site(alice, "old.example.com")
    response = alice_client.post(f"/client/sites/{site.id}/edit", data=EVERY_SETTING)
    assert response.status_code == 302, page_text(response)
    db.session.refresh(site)
    assert stored(site) == EVERY_SETTING_STORED
    assert site.config_version == 2


def test_basic_auth_line_with_only_a_username_keeps_that_users_password(
    db: Any, alice: User, alice_client: FlaskClient
) -> None:
    site = factories.make_site(alice, basic_auth=[
        {"username": "ops", "password": "first-password"},
        {"username": "old", "password": "old-password"},
    ])
    kept = {u.username: u.password_hash for u in site.basic_auth_users}["ops"]
    response = alice_client.post(f"/client/sites/{site.id}/edit", data=site_form(
        domain=site.domain, basic_auth="ops\nnew:brand-new-pass"))
    assert response.status_code == 302, page_text(response)
    db.session.refresh(site)
    hashes = {u.username: u.password_hash for u in site.basic_auth_users}
    assert set(hashes) == {"ops", "new"}
    assert hashes["ops"] == kept


def test_rate_limit_left_blank_means_no_limit(db: Any, alice: User,
                                              alice_client: FlaskClient) -> None:
    site = factories.make_site(alice, rate_limit={"requests_per_second": 5, "burst": 1})
    alice_client.post(f"/client/sites/{site.id}/edit",
                      data=site_form(domain=site.domain, rate_limit_rps="", rate_limit_burst="9"))
    db.session.refresh(site)
    assert site.rate_limit is None


@pytest.mark.parametrize(("fields", "message"), [
    ({"domain": "not a domain"}, None),
    ({"backends": ""}, "at least one backend is required"),
    ({"backends": "localhost"}, "line 1: write host:port or host:port weight"),
    ({"backends": "127.0.0.1:http"}, "line 1: port 'http' is not a number"),
    ({"backends": "127.0.0.1:80 heavy"}, "line 1: weight 'heavy' is not a number"),
    ({"backends": "::1:8080"}, "line 1: write IPv6 addresses in brackets"),
    ({"backends": "127.0.0.1:8080\n\n10.0.0.1:99999"}, "line 3: port must be a number"),
    ({"backends": "127.0.0.1:8080 500"}, "line 1: weight must be a whole number"),
    ({"aliases": "ok.example.com\n\nbad..name"}, "line 3: "),
    ({"aliases": "ok.example.com\nok.example.com"}, "line 2: is listed twice"),
    ({"ip_allow": "10.0.0.0/8\n10.0.0.1/8"}, "line 2: '10.0.0.1/8' is not a valid"),
    ({"ip_deny": "nope"}, "line 1: must be an IP address or network"),
    ({"geo_mode": "allow", "geo_countries": "DE XX"}, "'XX' is not an ISO 3166 country code"),
    ({"geo_mode": "allow", "geo_countries": ""}, "list at least one country"),
    ({"headers": "X-Ok: yes\nHost: evil.example"}, "line 2: Host: the header 'Host' is managed"),
    ({"headers": "X-Ok: yes;rm"}, "line 1: X-Ok: may only use"),
    ({"headers": "no colon here"}, "line 1: write Name: value"),
    ({"headers": "X-A: 1\nx-a: 2"}, "line 2: x-a is listed twice"),
    ({"basic_auth": "newuser"}, "line 1: password is required"),
    ({"basic_auth": "ops:short"}, "line 1: password must be at least 8 characters"),
    ({"basic_auth": "bad name:long-enough-pw"}, "line 1: username may use"),
    ({"rate_limit_rps": "0"}, "must be a whole number between 1 and 100000"),
    ({"rate_limit_rps": "10", "rate_limit_burst": "-1"}, "between 0 and 100000"),
    ({"rate_limit_rps": "fast"}, "Not a valid integer value"),
    ({"cache_enabled": "y", "cache_ttl": "0"}, "must be a whole number between 1"),
    ({"force_https": "y"}, "needs TLS"),
    ({"pool": "nowhere"}, "Not a valid choice"),
])
def test_invalid_site_input_is_shown_under_its_field_and_nothing_is_stored(
    db: Any, alice: User, alice_client: FlaskClient, fields: dict[str, str],
    message: str | None,
) -> None:
    response = alice_client.post("/client/sites/new", data=site_form(**fields))
    assert response.status_code == 422
    text = page_text(response)
    assert "invalid-feedback" in text
    if message:
        assert message in text
    assert site_count(db) == 0


def test_invalid_edit_changes_nothing(db: Any, alice: User, alice_client: FlaskClient) -> None:
    site = factories.make_site(alice, "keep.example.com")
    factories.make_site(alice, "taken.example.com")
    response = alice_client.post(f"/client/sites/{site.id}/edit", data=site_form(
        domain="taken.example.com", websocket="y", waf_level="high"))
    assert response.status_code == 422
    assert "already used by another site" in page_text(response)
    db.session.rollback()
    db.session.expire_all()
    site = db.session.get(Site, site.id)
    assert (site.domain, site.websocket, site.waf_level.value) == ("keep.example.com", False, "off")


def test_client_cannot_block_own_site_through_the_form(
    db: Any, alice: User, alice_client: FlaskClient
) -> None:
    site = factories.make_site(alice)
    alice_client.post(f"/client/sites/{site.id}/edit", data=site_form(
        domain=site.domain, blocked="y", blocked_reason="mine"))
    db.session.refresh(site)
    assert site.blocked is False


def test_blocked_site_shows_the_reason_to_its_owner(
    db: Any, admin: User, alice: User, alice_client: FlaskClient
) -> None:
    site = factories.make_site(alice)
    sites.set_blocked(admin, site.id, True, "unpaid invoice")
    assert "An administrator blocked this site: unpaid invoice" in page_text(
        alice_client.get(f"/client/sites/{site.id}"))


def test_client_deletes_own_site(db: Any, alice: User, alice_client: FlaskClient) -> None:
    site = factories.make_site(alice)
    response = alice_client.post(f"/client/sites/{site.id}/delete", follow_redirects=True)
    assert "Site deleted." in page_text(response)
    assert site_count(db) == 0


def test_client_at_quota_sees_disabled_add_button_and_cannot_add_a_site(
    db: Any, client: FlaskClient
) -> None:
    carol = factories.make_user("client", "carol", max_sites=1)
    factories.make_node()  # in the default pool the site form chooses
    factories.make_site(carol, "only.example.com")
    login(client, carol)
    text = page_text(client.get("/client/"))
    assert "1 of 1 site used" in text
    assert "disabled" in text and "You have reached your quota of 1 site" in text
    response = client.post("/client/sites/new", data=site_form(domain="more.example.com"),
                           follow_redirects=True)
    assert "site quota reached" in page_text(response)
    assert site_count(db) == 1


# ----------------------------------------------------------------------------- profile


def test_without_mail_a_client_cannot_change_the_address_and_is_told_who_can(
    db: Any, alice: User, bob: User, alice_client: FlaskClient
) -> None:
    """Changing an address needs a link mailed to it (tests/integration/
    test_email_change.py); without SMTP_HOST only an administrator changes it."""
    page = page_text(alice_client.get("/client/profile"))
    assert "alice@example.com" in page and 'name="email"' not in page
    assert "an administrator changes e-mail addresses: ask one to change yours." in words(page)
    for address in ("new@example.org", bob.email):
        response = alice_client.post("/client/profile/email", data={"email": address})
        assert response.status_code == 403
        assert "an administrator changes e-mail addresses" in page_text(response)
    assert committed_email(db, alice) == "alice@example.com"


def test_without_mail_an_administrator_is_sent_to_the_user_form_which_says_taken(
    db: Any, admin: User, alice: User, admin_client: FlaskClient
) -> None:
    page = page_text(admin_client.get("/client/profile"))
    assert f'href="/admin/users/{admin.id}/edit"' in page and 'name="email"' not in page
    assert "change yours on your account's page under Users" in words(page)
    # Administrators manage accounts: their user form says an address is taken.
    response = admin_client.post(f"/admin/users/{admin.id}/edit", data={
        "username": "admin", "email": alice.email, "role": "admin", "max_sites": "10",
        "is_active": "y"})
    assert response.status_code == 422
    assert "is already used by another account" in page_text(response)
    response = admin_client.post(f"/admin/users/{admin.id}/edit", data={
        "username": "admin", "email": "boss@example.org", "role": "admin", "max_sites": "10",
        "is_active": "y"})
    assert response.status_code == 302
    assert committed_email(db, admin) == "boss@example.org"


def words(page: str) -> str:
    """The page's text as read, without tags and with single spaces."""
    return " ".join(re.sub(r"<[^>]+>", " ", page).split())


def committed_email(db: Any, user: User) -> str:
    db.session.rollback()
    return db.session.get(User, user.id).email


def test_password_change_ends_the_session_and_the_new_password_signs_in(
    db: Any, alice: User, alice_client: FlaskClient
) -> None:
    new = "a-much-better-passphrase"
    response = alice_client.post("/client/profile/password", data={
        "current_password": factories.PASSWORD, "new_password": new, "confirm_password": new})
    assert response.status_code == 302
    assert "/auth/login" in response.headers["Location"]
    assert "/auth/login" in alice_client.get("/client/").headers["Location"]
    assert users.authenticate("alice", new) is not None
    login(alice_client, alice, new)
    assert alice_client.get("/client/").status_code == 200


@pytest.mark.parametrize(("current", "new", "confirm", "message"), [
    ("wrong-password-1", "a-much-better-passphrase", "a-much-better-passphrase",
     "is not correct"),
    (factories.PASSWORD, "short", "short", "Password must be at least 12 characters"),
    (factories.PASSWORD, "a-much-better-passphrase", "something-else-entirely",
     "does not match"),
])
def test_refused_password_change_keeps_the_old_password(
    db: Any, alice: User, alice_client: FlaskClient, current: str, new: str, confirm: str,
    message: str,
) -> None:
    response = alice_client.post("/client/profile/password", data={
        "current_password": current, "new_password": new, "confirm_password": confirm})
    assert response.status_code == 422
    assert message in page_text(response)
    assert users.authenticate("alice", factories.PASSWORD) is not None
    assert alice_client.get("/client/").status_code == 200


# ----------------------------------------------------------------------------- tokens


def test_token_is_shown_once_on_the_result_page_and_never_stored_in_the_session(
    db: Any, alice: User, alice_client: FlaskClient
) -> None:
    response = alice_client.post("/client/tokens", data={"name": "deploy", "expires_in_days": "30"})
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    plaintext = re.search(r'value="(rpcc_[^"]+)"', response.get_data(as_text=True))[1]
    assert tokens.authenticate_token(plaintext).id == alice.id
    with alice_client.session_transaction() as session:
        assert plaintext not in repr(dict(session))
    listing = page_text(alice_client.get("/client/tokens"))
    assert "deploy" in listing and plaintext[:11] in listing
    assert plaintext not in listing


def test_token_with_invalid_name_is_a_field_error(db: Any, alice_client: FlaskClient) -> None:
    response = alice_client.post("/client/tokens", data={"name": "bad/name"})
    assert response.status_code == 422
    assert "1 to 64 letters" in page_text(response)
    assert db.session.scalar(select(func.count(ApiToken.id))) == 0


def test_client_revokes_own_token(db: Any, alice: User, alice_client: FlaskClient) -> None:
    row, plaintext = tokens.create_token(alice, "nightly-ci")
    assert "nightly-ci" in page_text(alice_client.get("/client/tokens"))
    response = alice_client.post(f"/client/tokens/{row.id}/revoke", follow_redirects=True)
    text = page_text(response)
    assert "Token revoked" in text
    assert "nightly-ci" not in text and "You have no API tokens." in text
    assert tokens.authenticate_token(plaintext) is None


def test_client_cannot_revoke_another_users_token(
    db: Any, bob: User, alice_client: FlaskClient
) -> None:
    row, plaintext = tokens.create_token(bob, "bobs")
    assert alice_client.post(f"/client/tokens/{row.id}/revoke").status_code == 404
    assert tokens.authenticate_token(plaintext) is not None


def test_a_pool_without_a_node_is_shown_but_cannot_be_chosen(
    db: Any, admin: User, alice_client: FlaskClient, edge_pool: str
) -> None:
    nodes.create_pool(admin, "empty", "no nodes yet")
    form = page_text(alice_client.get("/client/sites/new"))
    assert re.search(r'<option data-engines="nginx" (selected )?value="edge">edge \(1 node: '
                     r'nginx\)</option>', form), form
    assert '<option data-engines="" disabled value="empty">empty (no node yet)</option>' in form
    response = alice_client.post("/client/sites/new", data=site_form(pool="empty"))
    assert response.status_code == 422
    assert "this pool has no enabled node yet" in page_text(response)
    assert site_count(db) == 0
