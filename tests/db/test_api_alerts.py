"""The alert API: rules and silences for administrators (422 naming the field of any
bad value, 403 for clients), alerts scoped to what each user may see."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from app.models import Alert, DeploymentStatus, Node, Rollout, RolloutKind, User
from app.models.base import utcnow
from app.services import alerts
from tests import factories
from tests.conftest import api_headers


@pytest.fixture()
def as_admin(admin: User) -> dict[str, str]:
    return api_headers(admin)


def test_rules_are_created_read_changed_and_deleted(client: FlaskClient,
                                                    as_admin: dict[str, str]) -> None:
    made = client.post("/api/v1/alert-rules", headers=as_admin, json={
        "name": "Certificate soon", "kind": "cert_expiring", "threshold": 7,
        "severity": "critical", "pool": "default", "renotify_seconds": 3600})
    assert made.status_code == 201, made.get_json()
    rule = made.get_json()
    assert {k: rule[k] for k in ("kind", "threshold", "duration_seconds", "severity", "pool",
                                 "renotify_seconds", "enabled")} == {
        "kind": "cert_expiring", "threshold": 7.0, "duration_seconds": 0,
        "severity": "critical", "pool": "default", "renotify_seconds": 3600, "enabled": True}
    url = f"/api/v1/alert-rules/{rule['id']}"
    assert client.get(url, headers=as_admin).get_json()["name"] == "Certificate soon"
    changed = client.patch(url, headers=as_admin, json={"threshold": 14, "pool": None,
                                                        "enabled": False})
    assert changed.status_code == 200
    assert (changed.get_json()["threshold"], changed.get_json()["pool"],
            changed.get_json()["enabled"]) == (14.0, None, False)
    listed = client.get("/api/v1/alert-rules", headers=as_admin).get_json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == rule["id"]
    assert client.delete(url, headers=as_admin).status_code == 204
    assert client.get(url, headers=as_admin).status_code == 404


@pytest.mark.parametrize("body,field,message", [
    ({"kind": "cpu", "threshold": 120}, "threshold", "must be 1 to 99 %"),
    ({"kind": "cpu"}, "threshold", "is required: 1 to 99 %"),
    ({"kind": "site_down", "threshold": 1.5}, "threshold", "must be a whole number"),
    ({"kind": "cert_expiring", "threshold": 0}, "threshold", "must be 1 to 365 days"),
    ({"kind": "drift", "threshold": 3}, "threshold", "takes no threshold"),
    ({"kind": "drift", "duration_seconds": -1}, "duration_seconds", "between 0 and 604800"),
    ({"kind": "drift", "renotify_seconds": 30}, "renotify_seconds", "0 (never) or 60"),
    ({"kind": "drift", "pool": "nowhere"}, "pool", "no such pool"),
    ({"kind": "drift", "name": "a\nb"}, "name", "on one line"),
    ({"kind": "drift", "name": "x" * 101}, "name", "1 to 100 characters"),
    ({"kind": "sideways"}, "kind", "Must be one of"),
    ({"kind": "drift", "duration_seconds": "5"}, "duration_seconds", "Not a valid integer"),
    ({"kind": "drift", "enabled": "yes"}, "enabled", "Not a valid boolean"),
])
def test_a_bad_rule_is_refused_naming_the_field(client: FlaskClient, as_admin: dict[str, str],
                                                body: dict[str, Any], field: str,
                                                message: str) -> None:
    answer = client.post("/api/v1/alert-rules", headers=as_admin,
                         json={"name": "rule", **body})
    assert answer.status_code == 422, answer.get_json()
    assert message in str(answer.get_json()["error"]["fields"][field])


def test_a_rules_kind_cannot_change(client: FlaskClient, admin: User,
                                    as_admin: dict[str, str]) -> None:
    rule = alerts.create_rule(admin, {"name": "drift", "kind": "drift"})
    answer = client.patch(f"/api/v1/alert-rules/{rule.id}", headers=as_admin,
                          json={"kind": "cpu", "threshold": 90})
    assert answer.status_code == 422
    assert answer.get_json()["error"]["fields"]["kind"].startswith("cannot change")


def test_the_recommended_rules_are_added_once(client: FlaskClient,
                                              as_admin: dict[str, str]) -> None:
    first = client.post("/api/v1/alert-rules/recommended", headers=as_admin)
    assert first.status_code == 201
    assert len(first.get_json()["items"]) == len(alerts.RECOMMENDED)
    again = client.post("/api/v1/alert-rules/recommended", headers=as_admin)
    assert again.get_json() == {"items": []}


def test_clients_cannot_reach_rules_or_silences(client: FlaskClient, admin: User,
                                                alice: User) -> None:
    headers = api_headers(alice)
    rule = alerts.create_rule(admin, {"name": "drift", "kind": "drift"})
    for method, url in (("GET", "/api/v1/alert-rules"), ("POST", "/api/v1/alert-rules"),
                        ("POST", "/api/v1/alert-rules/recommended"),
                        ("GET", f"/api/v1/alert-rules/{rule.id}"),
                        ("PATCH", f"/api/v1/alert-rules/{rule.id}"),
                        ("DELETE", f"/api/v1/alert-rules/{rule.id}"),
                        ("GET", "/api/v1/silences"), ("POST", "/api/v1/silences")):
        answer = client.open(url, method=method, headers=headers,
                             json={"name": "mine", "kind": "drift"})
        assert answer.status_code == 403, (method, url)
    assert alerts.get_rule(admin, rule.id).name == "drift"


def test_alerts_are_listed_read_and_acknowledged_within_each_users_reach(
        db: Any, client: FlaskClient, admin: User, alice: User, bob: User,
        as_admin: dict[str, str]) -> None:
    site = factories.make_site(alice, "shop.example.com")
    node = factories.make_node("edge-1")
    alerts.create_rule(admin, {"name": "Deployment failed", "kind": "deployment_failed"})
    alerts.create_rule(admin, {"name": "Unreachable", "kind": "node_unreachable"})
    db.session.add(Rollout(kind=RolloutKind.DEPLOY, site_id=site.id, owner_id=alice.id,
                           pool_id=site.pool_id, status=DeploymentStatus.FAILED))
    db.session.get(Node, node.id).last_check = {"ssh": {"ok": False, "detail": ""}}
    db.session.commit()
    alerts.evaluate()
    mine = db.session.scalar(select(Alert).where(Alert.site_id == site.id))
    nodes_alert = db.session.scalar(select(Alert).where(Alert.node_id == node.id))

    as_alice, as_bob = api_headers(alice), api_headers(bob)
    listed = client.get("/api/v1/alerts", headers=as_alice).get_json()
    assert [item["id"] for item in listed["items"]] == [mine.id]
    item = listed["items"][0]
    assert (item["subject"], item["state"], item["kind"], item["acknowledged"]) == (
        "shop.example.com", "firing", "deployment_failed", False)
    assert not {"node_id", "pool_id", "rule_id", "acknowledged_by"} & set(item)
    assert client.get("/api/v1/alerts", headers=as_bob).get_json()["items"] == []
    as_admin_list = client.get("/api/v1/alerts?state=firing&kind=node_unreachable",
                               headers=as_admin).get_json()
    assert [i["id"] for i in as_admin_list["items"]] == [nodes_alert.id]
    assert as_admin_list["items"][0]["node_id"] == node.id
    bad = client.get("/api/v1/alerts?state=sideways", headers=as_admin)
    assert bad.status_code == 422 and "state" in bad.get_json()["error"]["fields"]

    for alert_id in (mine.id, nodes_alert.id):
        assert client.get(f"/api/v1/alerts/{alert_id}", headers=as_bob).status_code == 404
        assert client.post(f"/api/v1/alerts/{alert_id}/acknowledge",
                           headers=as_bob).status_code == 404
    assert client.get(f"/api/v1/alerts/{nodes_alert.id}", headers=as_alice).status_code == 404
    detail = client.get(f"/api/v1/alerts/{mine.id}", headers=as_alice).get_json()
    assert [(t["from_state"], t["to_state"]) for t in detail["transitions"]] == [
        (None, "firing")]
    acked = client.post(f"/api/v1/alerts/{mine.id}/acknowledge", headers=as_alice)
    assert acked.status_code == 200 and acked.get_json()["acknowledged"] is True
    by = client.get(f"/api/v1/alerts/{mine.id}", headers=as_admin).get_json()
    assert by["acknowledged_by"] == "alice"

    db.session.add(Rollout(kind=RolloutKind.DEPLOY, site_id=site.id, owner_id=alice.id,
                           pool_id=site.pool_id, status=DeploymentStatus.SUCCEEDED))
    db.session.commit()
    alerts.evaluate()
    resolved = client.post(f"/api/v1/alerts/{nodes_alert.id}/acknowledge", headers=as_admin)
    assert resolved.status_code == 200
    late = client.post(f"/api/v1/alerts/{mine.id}/acknowledge", headers=as_alice)
    assert late.status_code == 409
    everything = client.get("/api/v1/alerts?state=resolved", headers=as_alice).get_json()
    assert [i["id"] for i in everything["items"]] == [mine.id]


def test_silences_are_created_changed_ended_and_deleted(
        client: FlaskClient, as_admin: dict[str, str]) -> None:
    factories.make_node("edge-1")
    ends = (utcnow() + timedelta(hours=2)).isoformat()
    made = client.post("/api/v1/silences", headers=as_admin,
                       json={"node": "edge-1", "ends_at": ends, "reason": "upgrade"})
    assert made.status_code == 201, made.get_json()
    silence = made.get_json()
    assert (silence["target_kind"], silence["target"], silence["state"]) == ("node", "edge-1",
                                                                             "active")
    url = f"/api/v1/silences/{silence['id']}"
    later = (utcnow() + timedelta(hours=3)).isoformat()
    changed = client.patch(url, headers=as_admin, json={"ends_at": later, "reason": "longer"})
    assert changed.status_code == 200 and changed.get_json()["reason"] == "longer"
    listed = client.get("/api/v1/silences?state=active", headers=as_admin).get_json()
    assert [s["id"] for s in listed["items"]] == [silence["id"]]
    ended = client.post(f"{url}/end", headers=as_admin)
    assert ended.status_code == 200 and ended.get_json()["state"] == "ended"
    assert client.post(f"{url}/end", headers=as_admin).status_code == 409
    assert client.delete(url, headers=as_admin).status_code == 204
    assert client.get(url, headers=as_admin).status_code == 404


@pytest.mark.parametrize("body,field,message", [
    ({}, "site", "give the node, the pool or the site"),
    ({"node": "edge-1", "site": "shop.example.com"}, "site", "give only one"),
    ({"node": "edge-9"}, "node", "no node of that name"),
    ({"pool": "default", "ends_at": "2000-01-01T00:00:00Z"}, "ends_at", "after the start"),
    ({"pool": "default", "starts_at": "2000-01-01T00:00:00Z",
      "ends_at": "2000-01-02T00:00:00Z"}, "ends_at", "in the future"),
    ({"pool": "default", "ends_at": "2999-01-01T00:00:00Z"}, "ends_at", "at most 31 days"),
    ({"pool": "default", "ends_at": "tomorrow"}, "ends_at", "Not a valid datetime"),
    ({"pool": "default", "reason": "a\u0000b"}, "reason", "on one line"),
])
def test_a_bad_silence_is_refused_naming_the_field(client: FlaskClient,
                                                   as_admin: dict[str, str],
                                                   body: dict[str, Any], field: str,
                                                   message: str) -> None:
    factories.make_node("edge-1")
    payload = {"ends_at": (utcnow() + timedelta(hours=1)).isoformat(), **body}
    answer = client.post("/api/v1/silences", headers=as_admin, json=payload)
    assert answer.status_code == 422, answer.get_json()
    assert message in str(answer.get_json()["error"]["fields"][field])
