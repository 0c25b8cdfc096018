"""/api/v1/audit (administrators): filters by user, action, type and time."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlencode

import pytest
from sqlalchemy import select

from app.extensions import db as _db
from app.models import AuditLog
from app.models.base import utcnow
from app.services import audit
from tests import factories
from tests.conftest import api_headers

ENTRY_FIELDS = {"id", "username", "action", "object_type", "object_id", "details", "ip", "at"}


@pytest.fixture()
def admin_h(admin):
    return api_headers(admin)


def test_lists_entries_newest_first_with_exact_fields(client, admin, alice, admin_h):
    factories.make_site(alice, "audited.example.com")
    body = client.get("/api/v1/audit", headers=admin_h).get_json()
    assert body["total"] >= 3 and body["page"] == 1
    first = body["items"][0]
    assert set(first) == ENTRY_FIELDS
    assert (first["action"], first["username"], first["object_type"]) == (
        "site.create", "alice", "site")
    assert first["at"].endswith("+00:00")


def test_filters_by_username_action_and_object_type(client, admin, alice, admin_h):
    factories.make_site(alice, "audited.example.com")
    query = urlencode({"username": "alice", "action": "site.create", "object_type": "site"})
    body = client.get(f"/api/v1/audit?{query}", headers=admin_h).get_json()
    assert body["total"] == 1
    assert body["items"][0]["details"]["domain"] == "audited.example.com"


def test_filters_by_time_window(client, admin, admin_h):
    old = audit.record(admin, "test.old", "test")
    old.at = utcnow() - timedelta(days=10)
    audit.record(admin, "test.new", "test")
    _db.session.commit()
    since = (utcnow() - timedelta(days=1)).isoformat()
    recent = client.get("/api/v1/audit?" + urlencode({"object_type": "test", "since": since}),
                        headers=admin_h).get_json()
    assert [e["action"] for e in recent["items"]] == ["test.new"]
    until = (utcnow() - timedelta(days=5)).replace(tzinfo=None).isoformat()
    older = client.get("/api/v1/audit?" + urlencode({"object_type": "test", "until": until}),
                       headers=admin_h).get_json()
    assert [e["action"] for e in older["items"]] == ["test.old"]


def test_offset_in_since_is_honoured(client, admin, admin_h):
    entry = audit.record(admin, "test.at", "test")
    entry.at = utcnow().replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=1)
    _db.session.commit()
    day = entry.at.date().isoformat()
    # 13:30+02:00 is 11:30 UTC: before the entry.
    found = client.get("/api/v1/audit?" + urlencode({
        "object_type": "test", "since": f"{day}T13:30:00+02:00"}), headers=admin_h).get_json()
    assert found["total"] == 1


def test_paginates(client, admin, admin_h):
    for n in range(5):
        audit.record(admin, f"test.{n}", "test")
    _db.session.commit()
    body = client.get("/api/v1/audit?object_type=test&per_page=2&page=3",
                      headers=admin_h).get_json()
    assert (body["page"], body["per_page"], body["total"], len(body["items"])) == (3, 2, 5, 1)
    assert _db.session.query(AuditLog).filter_by(object_type="test").count() == 5


@pytest.mark.parametrize("query,field", [("since=yesterday", "since"),
                                         ("until=2024-13-01T00:00:00", "until"),
                                         ("per_page=0", "per_page")])
def test_bad_filters_are_422_naming_the_field(client, admin_h, query, field):
    response = client.get(f"/api/v1/audit?{query}", headers=admin_h)
    assert response.status_code == 422
    assert field in response.get_json()["error"]["fields"]


def test_client_gets_403(client, alice):
    assert client.get("/api/v1/audit", headers=api_headers(alice)).status_code == 403


def _last_fields(action: str) -> list[str]:
    entry = _db.session.scalars(select(AuditLog).where(AuditLog.action == action)
                                .order_by(AuditLog.id.desc())).first()
    assert entry is not None
    return entry.details["fields"]


def test_updates_record_only_the_fields_that_really_changed(client, admin, alice, admin_h):
    site = factories.make_site(alice, "changes.example.com")
    whole = client.get(f"/api/v1/sites/{site.id}", headers=admin_h).get_json()
    version = whole["config_version"]
    submitted = {key: whole[key] for key in ("domain", "aliases", "backends", "pool", "hsts",
                                            "ssl_mode", "waf_level", "headers")}
    submitted["waf_level"] = "high"
    assert client.put(f"/api/v1/sites/{site.id}", json=submitted,
                      headers=admin_h).status_code == 200
    assert _last_fields("site.update") == ["waf_level"]
    submitted["basic_auth"] = [{"username": "ops", "password": "long enough secret"}]
    client.put(f"/api/v1/sites/{site.id}", json=submitted, headers=admin_h)
    assert _last_fields("site.update") == ["basic_auth"]
    client.put(f"/api/v1/sites/{site.id}", json={"domain": "changes.example.com"},
               headers=admin_h)
    assert _last_fields("site.update") == []
    after = client.get(f"/api/v1/sites/{site.id}", headers=admin_h).get_json()
    assert after["config_version"] == version + 2  # an unchanged save deploys nothing new

    client.patch(f"/api/v1/users/{alice.id}", json={"email": alice.email, "max_sites": 7},
                 headers=admin_h)
    assert _last_fields("user.update") == ["max_sites"]
    node = factories.make_node("audited-node")
    client.patch(f"/api/v1/nodes/{node.id}", json={"name": "audited-node", "ssh_port": 2222},
                 headers=admin_h)
    assert _last_fields("node.update") == ["ssh_port"]
