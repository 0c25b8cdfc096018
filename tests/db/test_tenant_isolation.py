"""Tenant isolation, enumerated from the URL map.

Every client-facing UI route and API endpoint that takes an object id is called by
another client with a victim's object id: it must answer 404 and change nothing.
New routes are covered without editing this file; a route for a new kind of object
fails until that kind is added to OWNED below.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import text

from app.extensions import db as _db
from app.services import tokens
from tests import factories
from tests.conftest import login

# URL segment before the id -> how to create the victim's object of that kind.
OWNED = {
    "sites": lambda victim: factories.make_site(victim, "victim.example.com").id,
    "tokens": lambda victim: tokens.create_token(victim, "victim-token")[0].id,
    "deployments": lambda victim: factories.make_rollout(
        factories.make_site(victim, "deployed.example.com")).id,
    "sessions": lambda victim: _victim_session(victim),
    "notifications": lambda victim: _victim_channel(victim),
    "notification-channels": lambda victim: _victim_channel(victim),
    "alerts": lambda victim: _victim_alert(victim),
}


def _victim_session(victim: Any) -> int:
    from app.models import UserSession
    from app.services import users

    users.start_session(victim, "203.0.113.9", "victim's browser")
    return _db.session.query(UserSession).filter_by(user_id=victim.id).one().id


def _victim_channel(victim: Any) -> int:
    from app.services import notifiers

    return notifiers.create_channel(victim, notifiers.ChannelInput(
        name="victim", kind="email", target="victim@example.test")).id


def _victim_alert(victim: Any) -> int:
    """An alert about a site of the victim's: its deployment failed."""
    from app.models import Alert, AlertKind, AlertRule, DeploymentStatus, NotificationDelivery
    from app.services import alerts, notifiers

    _db.session.add(AlertRule(name="victim", kind=AlertKind.DEPLOYMENT_FAILED))
    rollout = factories.make_rollout(factories.make_site(victim, "alerted.example.com"))
    rollout.status = DeploymentStatus.FAILED
    _db.session.commit()
    alerts.evaluate()
    # Its notices are delivered in the background: done before the test takes the
    # snapshot that the attacker's requests must leave unchanged.
    for delivery_id in _db.session.scalars(_db.select(NotificationDelivery.id)):
        notifiers.wait(delivery_id)
    _db.session.expire_all()
    return _db.session.query(Alert).one().id


# Segments whose routes are for administrators only: a client gets 403 there.
ADMIN_ONLY = {"nodes", "users", "pools", "audit", "dns-providers", "settings",
              "nameserver-zones", "alert-rules", "silences"}

SITE_JSON = {"domain": "attacker.example.com", "backends": [{"host": "127.0.0.1", "port": 80}],
             "websocket": True}
# A valid body for the other kinds' changes, so that the request reaches the lookup.
JSON_BODIES = {"notification-channels": {"name": "attacker", "enabled": False}}
SITE_FORM = {"domain": "attacker.example.com", "backends": "127.0.0.1:80", "pool": "default",
             "backend_protocol": "http", "ssl_mode": "none", "waf_level": "off",
             "geo_mode": "off", "cache_ttl": "300", "websocket": "y"}


def _id_rules(app) -> list[tuple[str, Any]]:
    rules = []
    for rule in app.url_map.iter_rules():
        if not (rule.rule.startswith("/client/") or rule.rule.startswith("/api/v1/")):
            continue
        if not any(isinstance(conv, type(app.url_map.converters["int"]))
                   or "id" in arg for arg, conv in rule._converters.items()):
            continue
        rules.append((rule.rule, rule))
    return sorted(rules)


def _segment(rule_text: str) -> str:
    match = re.search(r"/([a-z_-]+)/<[^>]+>", rule_text)
    assert match, rule_text
    return match.group(1)


def _snapshot() -> dict[str, list[tuple]]:
    """Every row of every table except the audit trail and token bookkeeping."""
    state = {}
    for table in _db.metadata.sorted_tables:
        if table.name == "audit_log":
            continue
        columns = [c.name for c in table.columns if c.name not in {"last_used", "last_login"}]
        rows = _db.session.execute(
            text(f"SELECT {', '.join(columns)} FROM {table.name} ORDER BY 1"))
        state[table.name] = [tuple(row) for row in rows]
    return state


def test_every_id_route_is_known(app):
    unknown = [r for r, _ in _id_rules(app) if _segment(r) not in OWNED | dict.fromkeys(ADMIN_ONLY)]
    assert unknown == [], "add these object kinds to OWNED or ADMIN_ONLY"


def test_id_routes_exist(app):
    segments = {_segment(r) for r, _ in _id_rules(app)}
    assert {"sites", "tokens"} <= segments


@pytest.mark.parametrize("surface", ["ui", "api"])
def test_other_clients_ids_answer_404_and_change_nothing(app, alice, bob, surface):
    victim_ids = {segment: make(alice) for segment, make in OWNED.items()}
    attacker = app.test_client()
    login(attacker, bob)
    headers = {"Authorization": f"Bearer {tokens.create_token(bob, 'attacker')[1]}"}
    attacker.get("/api/v1/sites", headers=headers)  # settles the token's last_used
    _db.session.commit()
    before = _snapshot()
    checked = 0
    for rule_text, rule in _id_rules(app):
        if (surface == "api") != rule_text.startswith("/api/"):
            continue
        segment = _segment(rule_text)
        if segment in ADMIN_ONLY:
            continue
        args = {arg: victim_ids[segment] for arg in rule.arguments}
        url = rule.build(args, append_unknown=False)[1]
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            kwargs: dict[str, Any] = {}
            if surface == "api":
                kwargs["headers"] = headers
                if method in {"POST", "PUT", "PATCH"}:
                    # Actions take no site fields: a valid body reaches the lookup.
                    kwargs["json"] = ({} if url.endswith(("/deploy", "/certificate"))
                                      else JSON_BODIES.get(segment, SITE_JSON))
            elif method == "POST":
                kwargs["data"] = SITE_FORM
            response = attacker.open(url, method=method, **kwargs)
            assert response.status_code == 404, (method, url, response.status_code)
            checked += 1
    _db.session.expire_all()
    assert _snapshot() == before
    assert checked >= 3


def test_client_gets_403_on_admin_api_resources(app, alice, bob):
    headers = {"Authorization": f"Bearer {tokens.create_token(bob, 'x')[1]}"}
    http = app.test_client()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/"):
            continue
        segment = rule.rule.split("/")[3] if rule.rule.count("/") >= 3 else ""
        if segment not in ADMIN_ONLY - {"pools"}:
            continue
        url = rule.build({arg: 1 for arg in rule.arguments}, append_unknown=False)[1]
        method = next(m for m in ("GET", "POST", "PUT", "PATCH", "DELETE") if m in rule.methods)
        response = http.open(url, method=method, headers=headers, json={})
        assert response.status_code == 403, (url, response.status_code)
