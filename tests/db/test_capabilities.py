"""Engine capabilities: a setting an engine of the pool cannot honour is refused with
the engine and the setting named; previews show each engine's files."""

from __future__ import annotations

import pytest

from app.errors import ValidationError
from app.services import nodes, sites
from tests import factories
from tests.conftest import api_headers


@pytest.fixture()
def caddy_pool(admin):
    pool = nodes.create_pool(admin, "edge")
    factories.make_node("caddy-1", pool="edge", proxy_type="caddy")
    factories.make_node("nginx-1", pool="edge", proxy_type="nginx")
    return pool


def test_waf_on_a_pool_with_caddy_is_refused_naming_engine_and_setting(alice, caddy_pool):
    with pytest.raises(ValidationError) as info:
        factories.make_site(alice, pool="edge", waf_level="medium")
    message = info.value.fields["waf_level"]
    assert "caddy" in message and "web application firewall" in message
    assert sites.list_sites(alice).total == 0


def test_same_settings_are_fine_on_an_nginx_only_pool(alice, admin):
    nodes.create_pool(admin, "nginx-only")
    factories.make_node("n1", pool="nginx-only")
    site = factories.make_site(alice, pool="nginx-only", waf_level="high",
                               geo={"mode": "deny", "countries": ["KP"]},
                               cache={"enabled": True, "ttl": 60},
                               rate_limit={"requests_per_second": 5, "burst": 10})
    assert site.waf_level.value == "high"


def test_update_to_an_unsupported_setting_changes_nothing(alice, caddy_pool):
    site = factories.make_site(alice, pool="edge")
    with pytest.raises(ValidationError) as info:
        sites.update_site(alice, site.id, {"cache": {"enabled": True, "ttl": 60},
                                           "websocket": True})
    assert "caching" in info.value.fields["cache"]
    fresh = sites.get_site(alice, site.id)
    assert fresh.cache_enabled is False and fresh.websocket is False
    assert fresh.config_version == 1


def test_disabled_nodes_do_not_restrict_the_pool(alice, admin, caddy_pool):
    caddy = next(n for n in nodes.list_nodes(admin).items if n.name == "caddy-1")
    nodes.set_enabled(admin, caddy.id, False)
    assert factories.make_site(alice, pool="edge", waf_level="low").waf_level.value == "low"


def test_api_answers_422_naming_the_engine(app, alice, caddy_pool):
    response = app.test_client().post("/api/v1/sites", headers=api_headers(alice), json={
        "domain": "geo.example.com", "pool": "edge",
        "backends": [{"host": "127.0.0.1", "port": 80}],
        "geo": {"mode": "allow", "countries": ["DE"]}})
    assert response.status_code == 422
    assert "caddy" in response.get_json()["error"]["fields"]["geo"]


def test_web_form_shows_the_engine_message_and_support_table(alice, alice_client, caddy_pool):
    response = alice_client.post("/client/sites/new", data={
        "domain": "rl.example.com", "pool": "edge", "backends": "127.0.0.1:80",
        "backend_protocol": "http", "ssl_mode": "none", "waf_level": "off",
        "geo_mode": "off", "cache_ttl": "300", "rate_limit_rps": "5", "rate_limit_burst": "5"})
    assert response.status_code == 422
    text = response.get_data(as_text=True)
    assert "caddy nodes in pool" in text and "rate limiting" in text
    assert "What the engines of the pool support" in text


def test_preview_returns_the_rendered_files_per_engine(app, alice):
    site = factories.make_site(alice, "preview.example.com", aliases=["www.preview.example.com"])
    http = app.test_client()
    for engine in ("nginx", "caddy", "traefik"):
        response = http.get(f"/api/v1/sites/{site.id}/config?engine={engine}",
                            headers=api_headers(alice))
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert body["engine"] == engine and body["files"]
        joined = "\n".join(body["files"].values())
        assert "preview.example.com" in joined and "www.preview.example.com" in joined
        assert f"owner {alice.id}" in joined
    bad = http.get(f"/api/v1/sites/{site.id}/config?engine=apache", headers=api_headers(alice))
    assert bad.status_code == 422 and "engine" in bad.get_json()["error"]["fields"]


def test_site_page_shows_the_preview(alice, alice_client):
    site = factories.make_site(alice, "page.example.com")
    text = alice_client.get(f"/client/sites/{site.id}?engine=caddy").get_data(as_text=True)
    assert "Generated configuration" in text and "page.example.com" in text


def test_preview_of_an_engine_that_cannot_honour_the_site_names_what_is_missing(
        app, alice, alice_client):
    site = factories.make_site(alice, "waf.example.com", waf_level="medium",
                               cache={"enabled": True, "ttl": 60})
    response = app.test_client().get(f"/api/v1/sites/{site.id}/config?engine=caddy",
                                     headers=api_headers(alice))
    assert response.status_code == 200
    body = response.get_json()
    assert body["files"] == {}
    assert body["missing"] == ["caching", "the web application firewall"]
    assert 'import "/etc/caddy/rpcc.d/rpcc.caddy"' in body["include_line"]
    page = alice_client.get(f"/client/sites/{site.id}?engine=caddy").get_data(as_text=True)
    assert "caddy cannot honour caching, the web application firewall" in page
    nginx = app.test_client().get(f"/api/v1/sites/{site.id}/config?engine=nginx",
                                  headers=api_headers(alice)).get_json()
    assert nginx["missing"] == [] and "modsecurity on;" in "".join(nginx["files"].values())


def test_another_tenants_preview_is_not_found(app, alice, bob):
    site = factories.make_site(alice, "mine.example.com")
    response = app.test_client().get(f"/api/v1/sites/{site.id}/config?engine=nginx",
                                     headers=api_headers(bob))
    assert response.status_code == 404
