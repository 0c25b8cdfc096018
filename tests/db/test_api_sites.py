"""/api/v1/sites: field names, tenancy, partial updates, validation and conflicts."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from app.services import sites
from tests import factories
from tests.conftest import api_headers

SITE_FIELDS = {
    "id", "domain", "aliases", "backends", "backend_protocol", "pool", "ssl_mode", "acme_challenge",
    "force_https", "hsts", "http2", "websocket", "waf_level", "cache", "geo", "ip_allow",
    "ip_deny", "basic_auth", "rate_limit", "headers", "blocked", "blocked_reason", "status",
    "config_version", "deployed_nodes", "target_nodes", "refused_reason", "deploy_warning",
    "created_at", "updated_at",
}
FULL_SITE = {
    "domain": "shop.example.com",
    "aliases": ["www.shop.example.com"],
    "backends": [{"host": "10.0.0.5", "port": 8080, "weight": 3},
                 {"host": "10.0.0.6", "port": 8080}],
    "backend_protocol": "https",
    "pool": "default",
    "ssl_mode": "letsencrypt",
    "force_https": True,
    "hsts": True,
    "http2": True,
    "websocket": True,
    "waf_level": "medium",
    "cache": {"enabled": True, "ttl": 600},
    "geo": {"mode": "deny", "countries": ["RU", "KP"]},
    "ip_allow": ["192.0.2.0/24"],
    "ip_deny": ["198.51.100.7/32"],
    "basic_auth": [{"username": "staff", "password": "s3cret-pass-1"}],
    "rate_limit": {"requests_per_second": 10, "burst": 20},
    "headers": {"X-Frame-Options": "DENY"},
}


@pytest.fixture()
def alice_h(alice):
    return api_headers(alice)


@pytest.fixture()
def admin_h(admin):
    return api_headers(admin)


def test_client_creates_site_with_every_field_and_sees_the_client_view(client, alice_h):
    response = client.post("/api/v1/sites", json=FULL_SITE, headers=alice_h)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert set(body) == SITE_FIELDS
    for key, value in FULL_SITE.items():
        if key not in {"backends", "basic_auth"}:
            assert body[key] == value, key
    assert body["backends"] == [{"host": "10.0.0.5", "port": 8080, "weight": 3},
                                {"host": "10.0.0.6", "port": 8080, "weight": 1}]
    assert body["basic_auth"] == [{"username": "staff"}]
    assert body["blocked"] is False and body["blocked_reason"] == ""
    assert "s3cret-pass-1" not in response.get_data(as_text=True)


def test_site_defaults_apply_when_only_domain_and_backends_are_sent(client, alice_h):
    response = client.post("/api/v1/sites", headers=alice_h, json={
        "domain": "min.example.com", "backends": [{"host": "127.0.0.1", "port": 80}]})
    body = response.get_json()
    assert response.status_code == 201
    assert (body["pool"], body["ssl_mode"], body["waf_level"], body["rate_limit"]) == (
        "default", "none", "off", None)


def test_admin_sees_owner_fields_and_may_create_for_a_client(client, admin_h, alice):
    response = client.post("/api/v1/sites", headers=admin_h, json={
        "domain": "managed.example.com", "backends": [{"host": "127.0.0.1", "port": 80}],
        "owner_id": alice.id})
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == SITE_FIELDS | {"owner_id", "owner"}
    assert (body["owner_id"], body["owner"]) == (alice.id, "alice")


def test_client_cannot_choose_an_owner(client, alice_h, bob):
    response = client.post("/api/v1/sites", headers=alice_h, json={
        "domain": "x.example.com", "backends": [{"host": "127.0.0.1", "port": 80}],
        "owner_id": bob.id})
    assert response.status_code == 422
    assert "owner_id" in response.get_json()["error"]["fields"]


def test_client_lists_only_own_sites(client, alice, bob, alice_h):
    factories.make_site(alice, "a.example.com")
    factories.make_site(bob, "b.example.com")
    body = client.get("/api/v1/sites", headers=alice_h).get_json()
    assert [s["domain"] for s in body["items"]] == ["a.example.com"]
    assert body["total"] == 1 and "owner_id" not in body["items"][0]


def test_admin_lists_all_sites_and_filters_by_owner_query_and_pool(client, admin, alice, bob,
                                                                     admin_h):
    factories.make_site(alice, "a.example.com")
    factories.make_site(bob, "b.example.com", aliases=["shop.b.example.com"])
    body = client.get("/api/v1/sites", headers=admin_h).get_json()
    assert [s["domain"] for s in body["items"]] == ["a.example.com", "b.example.com"]
    owned = client.get(f"/api/v1/sites?owner_id={bob.id}", headers=admin_h).get_json()
    assert [s["domain"] for s in owned["items"]] == ["b.example.com"]
    found = client.get("/api/v1/sites?q=shop", headers=admin_h).get_json()
    assert [s["domain"] for s in found["items"]] == ["b.example.com"]
    assert client.get("/api/v1/sites?pool=default", headers=admin_h).get_json()["total"] == 2
    assert client.get("/api/v1/sites?pool=other", headers=admin_h).get_json()["total"] == 0


def test_list_pagination_numbers(client, alice, alice_h):
    for n in range(5):
        factories.make_site(alice, f"s{n}.example.com")
    body = client.get("/api/v1/sites?page=2&per_page=2", headers=alice_h).get_json()
    assert (body["page"], body["per_page"], body["total"]) == (2, 2, 5)
    assert [s["domain"] for s in body["items"]] == ["s2.example.com", "s3.example.com"]
    last = client.get("/api/v1/sites?page=3&per_page=2", headers=alice_h).get_json()
    assert len(last["items"]) == 1
    capped = client.get("/api/v1/sites?per_page=1000", headers=alice_h).get_json()
    assert capped["per_page"] == 200 and len(capped["items"]) == 5


@pytest.mark.parametrize("query,field", [
    ("page=0", "page"), ("per_page=abc", "per_page"), ("per_page=+5", "per_page"),
    ("page=1.0", "page"), ("owner_id=-1", "owner_id"),
])
def test_bad_pagination_or_filter_values_are_422(client, alice_h, query, field):
    response = client.get(f"/api/v1/sites?{query}", headers=alice_h)
    assert response.status_code == 422
    assert field in response.get_json()["error"]["fields"]


def test_get_one_site(client, alice, alice_h):
    site = factories.make_site(alice, "one.example.com")
    response = client.get(f"/api/v1/sites/{site.id}", headers=alice_h)
    assert response.status_code == 200
    assert response.get_json()["domain"] == "one.example.com"


def test_site_times_carry_their_utc_offset(client, alice, alice_h):
    """RFC 3339 (the document's date-time): an instant without an offset is ambiguous."""
    site = factories.make_site(alice, "times.example.com")
    body = client.get(f"/api/v1/sites/{site.id}", headers=alice_h).get_json()
    listed = client.get("/api/v1/sites", headers=alice_h).get_json()["items"][0]
    for answer in (body, listed):
        for key in ("created_at", "updated_at"):
            assert datetime.fromisoformat(answer[key]).utcoffset() == timedelta(0), key


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_put_and_patch_change_sent_keys_and_keep_the_rest(client, alice, alice_h, method):
    site = factories.make_site(alice, "keep.example.com", websocket=True,
                               headers={"X-Test": "1"},
                               basic_auth=[{"username": "staff", "password": "s3cret-pass-1"}])
    response = client.open(f"/api/v1/sites/{site.id}", method=method, headers=alice_h,
                           json={"waf_level": "high", "cache": {"enabled": True}})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["waf_level"] == "high" and body["cache"] == {"enabled": True, "ttl": 300}
    assert body["websocket"] is True and body["headers"] == {"X-Test": "1"}
    assert body["domain"] == "keep.example.com" and body["basic_auth"] == [{"username": "staff"}]
    assert body["config_version"] == 2


def test_rate_limit_can_be_removed_with_null(client, alice, alice_h):
    site = factories.make_site(alice, rate_limit={"requests_per_second": 5, "burst": 1})
    response = client.patch(f"/api/v1/sites/{site.id}", headers=alice_h,
                            json={"rate_limit": None})
    assert response.status_code == 200 and response.get_json()["rate_limit"] is None


def test_delete_site_is_204_then_404(client, alice, alice_h):
    site = factories.make_site(alice)
    assert client.delete(f"/api/v1/sites/{site.id}", headers=alice_h).status_code == 204
    assert client.get(f"/api/v1/sites/{site.id}", headers=alice_h).status_code == 404


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
def test_client_cannot_reach_other_clients_site(client, alice, bob, method):
    site = factories.make_site(bob, "bobs.example.com")
    response = client.open(f"/api/v1/sites/{site.id}", method=method,
                           headers=api_headers(alice), json={"websocket": True})
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"
    assert sites.get_site(bob, site.id).websocket is False


def test_admin_reaches_any_site(client, alice, admin_h):
    site = factories.make_site(alice)
    response = client.patch(f"/api/v1/sites/{site.id}", headers=admin_h,
                            json={"blocked": True, "blocked_reason": "abuse"})
    assert response.status_code == 200
    assert response.get_json()["blocked"] is True


def test_client_cannot_block_own_site(client, alice, alice_h):
    site = factories.make_site(alice)
    response = client.patch(f"/api/v1/sites/{site.id}", headers=alice_h,
                            json={"blocked": True, "blocked_reason": "x"})
    assert response.status_code == 422
    assert "blocked" in response.get_json()["error"]["fields"]


@pytest.mark.parametrize("payload,field", [
    ({"domain": "a;b"}, "domain"),
    ({"domain": "ok.example.com", "colour": "blue"}, "colour"),
    ({"backends": [{"host": "127.0.0.1", "port": "80"}]}, "backends.0.port"),
    ({"backends": [{"host": "127.0.0.1", "port": 80, "tls": True}]}, "backends.0.tls"),
    ({"backends": [{"host": "evil;host", "port": 80}]}, "backends.0.host"),
    ({"force_https": "yes"}, "force_https"),
    ({"websocket": 1}, "websocket"),
    ({"cache": {"enabled": True, "ttl": 1.5}}, "cache.ttl"),
    ({"headers": {"X-A": "ok\r\nSet-Cookie: x"}}, "headers.X-A"),
    ({"headers": {"X-A": 5}}, "headers.X-A.value"),
    ({"headers": "X-A: 1"}, "headers"),
    ({"ip_allow": ["not-a-cidr"]}, "ip_allow.0"),
    ({"geo": {"mode": "deny", "countries": ["ZZZ"]}}, "geo.countries.0"),
    ({"waf_level": "extreme"}, "waf_level"),
    ({"pool": "nowhere"}, "pool"),
    ({"aliases": "www.example.com"}, "aliases"),
    ({"rate_limit": {"requests_per_second": True}}, "rate_limit.requests_per_second"),
    ({"basic_auth": [{"username": "u", "password": "short"}]}, "basic_auth.0.password"),
    ({"id": 5}, "id"),
])
def test_bad_values_are_422_naming_the_field(client, alice, alice_h, payload, field):
    site = factories.make_site(alice, "valid.example.com")
    response = client.patch(f"/api/v1/sites/{site.id}", headers=alice_h, json=payload)
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "invalid"
    assert field in error["fields"], error["fields"]


def test_create_without_required_fields_names_them(client, alice_h):
    response = client.post("/api/v1/sites", headers=alice_h, json={})
    assert response.status_code == 422
    assert {"domain", "backends"} <= set(response.get_json()["error"]["fields"])


def test_body_that_is_not_an_object_is_422(client, alice_h):
    response = client.post("/api/v1/sites", headers=alice_h, json=["domain"])
    assert response.status_code == 422


def test_domain_taken_by_another_site_is_422(client, bob, alice_h):
    factories.make_site(bob, "taken.example.com")
    response = client.post("/api/v1/sites", headers=alice_h, json={
        "domain": "taken.example.com", "backends": [{"host": "127.0.0.1", "port": 80}]})
    assert response.status_code == 422
    assert "domain" in response.get_json()["error"]["fields"]


def test_quota_reached_is_409(client, admin):
    carol = factories.make_user("client", "carol", max_sites=1)
    factories.make_site(carol)
    response = client.post("/api/v1/sites", headers=api_headers(carol), json={
        "domain": "second.example.com", "backends": [{"host": "127.0.0.1", "port": 80}]})
    assert response.status_code == 409
    assert "quota" in response.get_json()["error"]["message"]


def test_form_encoded_body_is_400_instead_of_an_empty_update(client, alice, alice_h):
    site = factories.make_site(alice, "form.example.com")
    response = client.patch(f"/api/v1/sites/{site.id}", headers=alice_h,
                            data={"domain": "changed.example.com"})
    assert response.status_code == 400
    assert "application/json" in response.get_json()["error"]["message"]
    assert sites.get_site(alice, site.id).domain == "form.example.com"
