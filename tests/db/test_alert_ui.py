"""The alert pages: administrators add rules (and the recommended set), silences and
acknowledgements through the forms; a client sees and acknowledges the alerts about
their own sites and nothing else."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import func, select

from app.models import (
    Alert,
    AlertRule,
    DeploymentStatus,
    Node,
    Rollout,
    RolloutKind,
    Silence,
    Site,
    User,
)
from app.models.base import as_utc, utcnow
from app.services import alerts
from tests import factories
from tests.pages import committed, page_text


def field_error(page: str, field: str) -> str:
    found = re.search(rf'id="{field}-error">(.*?)</div>\s*</div>', page, re.S)
    assert found, f"no error under {field}"
    return re.sub(r"<[^>]+>", "", found.group(1)).strip()


def rule_form(**fields: str) -> dict[str, str]:
    """What a browser posts for the rule form: every field, the changed ones given."""
    return {"name": "", "kind": "cpu", "threshold": "", "duration_minutes": "0",
            "severity": "warning", "pool": "", "renotify_minutes": "0", **fields}


def raised(db: Any, admin: User, site: Site, node: Node) -> tuple[Alert, Alert]:
    """A failed deployment of ``site`` and ``node`` unreachable, evaluated: their alerts."""
    alerts.create_rule(admin, {"name": "Deployment failed", "kind": "deployment_failed"})
    alerts.create_rule(admin, {"name": "Node unreachable", "kind": "node_unreachable",
                               "severity": "critical"})
    db.session.add(Rollout(kind=RolloutKind.DEPLOY, site_id=site.id, owner_id=site.owner_id,
                           pool_id=site.pool_id, status=DeploymentStatus.FAILED))
    db.session.get(Node, node.id).last_check = {"ssh": {"ok": False, "detail": "refused"}}
    db.session.commit()
    alerts.evaluate()
    found = {a.subject_kind.value: a for a in db.session.scalars(select(Alert))}
    return found["site"], found["node"]


def test_an_administrator_adds_a_rule_and_sees_each_problem_under_its_field(
        db: Any, admin_client: FlaskClient) -> None:
    page = admin_client.get("/admin/alerts/rules/new")
    assert page.status_code == 200 and "Certificate expiring" in page_text(page)
    refused = admin_client.post("/admin/alerts/rules/new",
                                data=rule_form(threshold="120", duration_minutes="5"))
    assert refused.status_code == 422
    text = page_text(refused)
    assert field_error(text, "threshold") == "must be 1 to 99 %"
    assert field_error(text, "name").startswith("is required")
    assert committed(db).scalar(select(func.count(AlertRule.id))) == 0

    refused = admin_client.post("/admin/alerts/rules/new",
                                data=rule_form(name="Drift", kind="drift", threshold="3"))
    assert "takes no threshold" in field_error(page_text(refused), "threshold")
    refused = admin_client.post("/admin/alerts/rules/new",
                                data=rule_form(name="Drift", kind="drift", duration_minutes="-1"))
    assert field_error(page_text(refused), "duration_minutes") == "must be 0 to 10080 (a week)"

    saved = admin_client.post("/admin/alerts/rules/new", data=rule_form(
        name="Disk almost full", kind="disk", threshold="92.5", duration_minutes="5",
        severity="critical", pool="default", renotify_minutes="30", enabled="y"))
    assert saved.status_code == 302
    rule = committed(db).scalar(select(AlertRule))
    assert (rule.threshold, rule.duration_seconds, rule.renotify_seconds, rule.pool_id,
            rule.severity.value) == (92.5, 300, 1800, 1, "critical")
    listed = page_text(admin_client.get("/admin/alerts/rules"))
    assert "Disk almost full" in listed and "92.5%" in listed and "every 30 min" in listed

    edit = admin_client.get(f"/admin/alerts/rules/{rule.id}/edit")
    assert 'name="kind"' not in edit.get_data(as_text=True)
    assert admin_client.post(f"/admin/alerts/rules/{rule.id}/edit", data={
        "name": "Disk almost full", "threshold": "95", "duration_minutes": "5",
        "severity": "critical", "pool": "", "renotify_minutes": "0"}).status_code == 302
    rule = committed(db).get(AlertRule, rule.id)
    assert (rule.threshold, rule.pool_id, rule.enabled) == (95.0, None, False)
    assert admin_client.post(f"/admin/alerts/rules/{rule.id}/delete").status_code == 302
    assert committed(db).scalar(select(func.count(AlertRule.id))) == 0


def test_the_recommended_rules_are_added_once(db: Any, admin_client: FlaskClient) -> None:
    assert 'id="no-rules"' in admin_client.get("/admin/alerts/rules").get_data(as_text=True)
    answer = admin_client.post("/admin/alerts/rules/recommended", follow_redirects=True)
    assert f"{len(alerts.RECOMMENDED)} recommended rule(s) added" in page_text(answer)
    again = admin_client.post("/admin/alerts/rules/recommended", follow_redirects=True)
    assert "Every recommended rule is there already." in page_text(again)
    rules = committed(db).scalars(select(AlertRule)).all()
    assert len(rules) == len(alerts.RECOMMENDED)
    assert sorted(r.threshold for r in rules if r.kind.value == "cert_expiring") == [1, 7, 14]


def test_an_administrator_sees_acknowledges_and_silences_an_alert(
        db: Any, admin: User, alice: User, admin_client: FlaskClient) -> None:
    site = factories.make_site(alice, "shop.example.com")
    node = factories.make_node("edge-1")
    _, down = raised(db, admin, site, node)
    listed = page_text(admin_client.get("/admin/alerts"))
    assert "Node unreachable" in listed and "edge-1 does not answer over SSH" in listed
    assert "shop.example.com" in listed
    firing = page_text(admin_client.get("/admin/alerts?state=firing&severity=critical"))
    assert "edge-1" in firing and "shop.example.com" not in firing
    assert admin_client.get("/admin/alerts?state=sideways").status_code == 422

    detail = page_text(admin_client.get(f"/admin/alerts/{down.id}"))
    assert "opened, firing" in detail and "Silence this node" in detail
    answer = admin_client.post(f"/admin/alerts/{down.id}/acknowledge", follow_redirects=True)
    assert "Alert acknowledged" in page_text(answer)
    assert re.search(r'id="alert-acknowledged">.*?by admin', page_text(answer), re.S)
    acked = page_text(admin_client.get("/admin/alerts?state=acknowledged"))
    assert "edge-1" in acked and "shop.example.com" not in acked

    form = page_text(admin_client.get("/admin/alerts/silences/new?node=edge-1"))
    assert 'value="edge-1"' in form
    refused = admin_client.post("/admin/alerts/silences/new", data={
        "node": "edge-1", "pool": "default", "site": "", "duration_minutes": "60"})
    assert refused.status_code == 422
    assert field_error(page_text(refused), "pool").startswith(
        "give only one of node, pool and site")
    refused = admin_client.post("/admin/alerts/silences/new", data={
        "node": "edge-9", "pool": "", "site": "", "duration_minutes": "60"})
    assert field_error(page_text(refused), "node") == "no node of that name"
    refused = admin_client.post("/admin/alerts/silences/new", data={
        "node": "edge-1", "pool": "", "site": "", "duration_minutes": "0"})
    assert field_error(page_text(refused), "duration_minutes") == "must be 1 or more"
    saved = admin_client.post("/admin/alerts/silences/new", data={
        "node": "edge-1", "pool": "", "site": "", "duration_minutes": "90",
        "reason": "new disk"})
    assert saved.status_code == 302
    silence = committed(db).scalar(select(Silence))
    assert silence.node_id == node.id
    assert timedelta(minutes=89) < as_utc(silence.ends_at) - utcnow() <= timedelta(minutes=90)
    listed = page_text(admin_client.get("/admin/alerts/silences?state=active"))
    assert "edge-1" in listed and "new disk" in listed and "active" in listed

    edit = admin_client.post(f"/admin/alerts/silences/{silence.id}/edit", data={
        "starts_at": as_utc(silence.starts_at).strftime("%Y-%m-%dT%H:%M"),
        "ends_at": (utcnow() + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M"),
        "reason": "new disk, slower than hoped"})
    assert edit.status_code == 302
    assert admin_client.post(f"/admin/alerts/silences/{silence.id}/end").status_code == 302
    ended = page_text(admin_client.get("/admin/alerts/silences?state=ended"))
    assert "slower than hoped" in ended
    again = admin_client.post(f"/admin/alerts/silences/{silence.id}/end", follow_redirects=True)
    assert "ended already" in page_text(again)
    assert admin_client.post(f"/admin/alerts/silences/{silence.id}/delete").status_code == 302
    assert committed(db).scalar(select(Silence)) is None

    history = page_text(admin_client.get("/admin/alerts/history"))
    assert "Node unreachable" in history and "Deployment failed" in history


def test_a_client_sees_and_acknowledges_only_the_alerts_about_their_sites(
        db: Any, admin: User, alice: User, bob: User, alice_client: FlaskClient) -> None:
    mine = factories.make_site(alice, "shop.example.com")
    node = factories.make_node("edge-1")
    alice_alert, node_alert = raised(db, admin, mine, node)
    bob_site = factories.make_site(bob, "bob.example.net")
    db.session.add(Rollout(kind=RolloutKind.DEPLOY, site_id=bob_site.id, owner_id=bob.id,
                           pool_id=1, status=DeploymentStatus.FAILED))
    db.session.commit()
    alerts.evaluate()
    bob_alert = db.session.scalar(select(Alert).where(Alert.site_id == bob_site.id))

    listed = page_text(alice_client.get("/client/alerts"))
    assert "shop.example.com" in listed and "Deployment failed" in listed
    assert "edge-1" not in listed and "bob.example.net" not in listed
    assert 'name="severity"' not in listed and "Node unreachable" not in listed
    for alert_id in (bob_alert.id, node_alert.id):
        assert alice_client.get(f"/client/alerts/{alert_id}").status_code == 404
        assert alice_client.post(f"/client/alerts/{alert_id}/acknowledge").status_code == 404
    detail = page_text(alice_client.get(f"/client/alerts/{alice_alert.id}"))
    assert "edge-1" not in detail and "Silence this" not in detail
    answer = alice_client.post(f"/client/alerts/{alice_alert.id}/acknowledge",
                               follow_redirects=True)
    assert re.search(r'id="alert-acknowledged">.*?by you', page_text(answer), re.S)
    history = page_text(alice_client.get("/client/alerts/history"))
    assert "shop.example.com" in history and "bob.example.net" not in history
    assert "edge-1" not in history
    for admin_page in ("/admin/alerts", "/admin/alerts/rules", "/admin/alerts/silences"):
        assert alice_client.get(admin_page).status_code == 403
