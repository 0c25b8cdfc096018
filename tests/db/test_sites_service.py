"""services.sites: rules, tenancy and hostile input at the service layer."""

import pytest
from sqlalchemy import func, select

from app.errors import Conflict, NotFound, ValidationError
from app.models import Site, SiteBasicAuthUser, SiteHostname
from app.services import sites
from tests import factories
from tests.hostile import hostile_site_payloads

FULL = {
    "domain": "shop.example.com",
    "aliases": ["www.shop.example.com", "*.cdn.example.com"],
    "backends": [{"host": "10.0.0.1", "port": 8080, "weight": 3},
                 {"host": "app.internal", "port": 8081, "weight": 1}],
    "backend_protocol": "https",
    "pool": "default",
    "ssl_mode": "letsencrypt",
    "acme_challenge": "dns-01",
    "force_https": True,
    "hsts": True,
    "http2": True,
    "websocket": True,
    "waf_level": "medium",
    "cache": {"enabled": True, "ttl": 600},
    "geo": {"mode": "deny", "countries": ["kp", "IR"]},
    "ip_allow": ["10.0.0.0/8", "2001:db8::/32"],
    "ip_deny": ["10.1.2.3"],
    "basic_auth": [{"username": "ops", "password": "s3cret-enough"}],
    "rate_limit": {"requests_per_second": 20, "burst": 40},
    "headers": {"X-Frame-Options": "DENY", "X-Robots-Tag": "noindex, nofollow"},
}


def test_every_setting_round_trips(alice):
    site = sites.create_site(alice, FULL)
    data = sites.site_to_dict(site, admin=False)
    assert data["aliases"] == ["www.shop.example.com", "*.cdn.example.com"]
    assert data["backends"][0] == {"host": "10.0.0.1", "port": 8080, "weight": 3}
    assert data["geo"] == {"mode": "deny", "countries": ["KP", "IR"]}
    assert data["ip_deny"] == ["10.1.2.3/32"]
    assert data["basic_auth"] == [{"username": "ops"}]
    assert data["rate_limit"] == {"requests_per_second": 20, "burst": 40}
    assert data["cache"] == {"enabled": True, "ttl": 600}
    assert data["waf_level"] == "medium" and data["websocket"] is True
    assert "owner_id" not in data
    row = sites.get_site(alice, site.id).basic_auth_users[0]
    assert row.password_hash.startswith("$2b$") and "s3cret" not in row.password_hash


@pytest.mark.parametrize("prefix,field,value", hostile_site_payloads())
def test_hostile_values_are_refused_and_nothing_is_stored(alice, prefix, field, value):
    payload = {"domain": "safe.example.com",
               "backends": [{"host": "127.0.0.1", "port": 80}], field: value}
    with pytest.raises(ValidationError) as info:
        sites.create_site(alice, payload)
    assert any(key == prefix or key.startswith(prefix + ".") for key in info.value.fields), \
        info.value.fields
    from app.extensions import db

    assert db.session.scalar(select(func.count(Site.id))) == 0
    assert db.session.scalar(select(func.count(SiteHostname.id))) == 0


def test_hostile_update_changes_nothing(alice):
    site = factories.make_site(alice, "keep.example.com")
    for _prefix, field, value in hostile_site_payloads():
        with pytest.raises(ValidationError):
            sites.update_site(alice, site.id, {field: value})
    fresh = sites.get_site(alice, site.id)
    assert fresh.domain == "keep.example.com" and fresh.config_version == 1
    assert [b.host for b in fresh.backends] == ["127.0.0.1"]


def test_domain_and_aliases_are_unique_across_the_fleet(alice, bob):
    factories.make_site(alice, "taken.example.com", aliases=["www.taken.example.com"])
    with pytest.raises(ValidationError) as info:
        factories.make_site(bob, "www.taken.example.com")
    assert "domain" in info.value.fields
    with pytest.raises(ValidationError) as info:
        factories.make_site(bob, "other.example.com", aliases=["taken.example.com"])
    assert "aliases" in info.value.fields


def test_quota_is_enforced(db):
    owner = factories.make_user("client", max_sites=2)
    factories.make_site(owner)
    factories.make_site(owner)
    with pytest.raises(Conflict, match="quota"):
        factories.make_site(owner)


def test_client_cannot_read_update_or_delete_other_clients_site(alice, bob):
    site = factories.make_site(alice)
    with pytest.raises(NotFound):
        sites.get_site(bob, site.id)
    with pytest.raises(NotFound):
        sites.update_site(bob, site.id, {"websocket": True})
    with pytest.raises(NotFound):
        sites.delete_site(bob, site.id)
    assert sites.get_site(alice, site.id).websocket is False


def test_client_lists_only_own_sites_admin_lists_all(admin, alice, bob):
    factories.make_site(alice, "a.example.com")
    factories.make_site(bob, "b.example.com")
    assert [s.domain for s in sites.list_sites(alice).items] == ["a.example.com"]
    assert [s.domain for s in sites.list_sites(admin).items] == ["a.example.com", "b.example.com"]
    assert [s.domain for s in sites.list_sites(admin, owner_id=bob.id).items] == ["b.example.com"]


def test_only_admins_block_sites(admin, alice):
    site = factories.make_site(alice)
    with pytest.raises(ValidationError) as info:
        sites.update_site(alice, site.id, {"blocked": True, "blocked_reason": "x"})
    assert "blocked" in info.value.fields
    blocked = sites.set_blocked(admin, site.id, True, "Abuse report 42")
    assert blocked.blocked and blocked.blocked_reason == "Abuse report 42"


def test_tls_settings_need_tls(alice):
    with pytest.raises(ValidationError) as info:
        factories.make_site(alice, force_https=True, hsts=True)
    assert set(info.value.fields) == {"force_https", "hsts"}


def test_basic_auth_password_kept_when_omitted_on_update(alice):
    site = factories.make_site(alice, basic_auth=[{"username": "ops", "password": "first-pass"}])
    before = site.basic_auth_users[0].password_hash
    users = [{"username": "ops"}, {"username": "dev", "password": "dev-pass-1"}]
    sites.update_site(alice, site.id, {"basic_auth": users})
    from app.extensions import db

    rows = {u.username: u.password_hash for u in db.session.scalars(select(SiteBasicAuthUser))}
    assert rows["ops"] == before and rows["dev"].startswith("$2b$")
    with pytest.raises(ValidationError):
        sites.update_site(alice, site.id, {"basic_auth": [{"username": "newbie"}]})


def test_update_bumps_config_version_and_audits(alice):
    site = factories.make_site(alice)
    updated = sites.update_site(alice, site.id, {"waf_level": "high"})
    assert updated.config_version == 2
    from app.extensions import db
    from app.models import AuditLog

    actions = list(db.session.scalars(select(AuditLog.action).order_by(AuditLog.id)))
    assert actions[-2:] == ["site.create", "site.update"]
