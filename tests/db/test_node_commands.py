"""A node's commands through the service, the API and the pages: a stored command
that is no known form keeps working until it is changed, and every change is audited
with the old and new command.  (The forms themselves are in
tests/unit/test_node_commands.py.)"""

from __future__ import annotations

import html
import re
import shlex
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app.errors import ValidationError
from app.extensions import db as _db
from app.models import AuditLog, Node, ProxyType
from app.services import nodes
from tests import factories
from tests.conftest import api_headers

# ----------------------------------------------------------------------------- service


def _audit(action: str) -> list[AuditLog]:
    return list(_db.session.scalars(select(AuditLog).where(AuditLog.action == action)
                                    .order_by(AuditLog.id)))


def _store_legacy(node: Node, **commands: str) -> None:
    """A node from before the forms existed: its commands were free strings."""
    for key, value in commands.items():
        setattr(node, key, value)
    _db.session.commit()


def test_every_change_of_a_nodes_commands_is_audited_with_old_and_new(admin):
    node = factories.make_node("edge-1")
    created = _audit("node.create")[-1].details
    assert (created["test_command"], created["reload_command"]) == ("nginx -t", "nginx -s reload")
    nodes.update_node(admin, node.id, {"reload_command": "systemctl reload nginx",
                                       "test_command": "nginx -t", "http_port": 8080})
    [entry] = _audit("node.commands")
    assert entry.username == "admin" and entry.object_id == str(node.id)
    assert entry.details == {"reload_command": {"old": "nginx -s reload",
                                                "new": "systemctl reload nginx"}}
    nodes.update_node(admin, node.id, {"http_port": 8081})
    assert len(_audit("node.commands")) == 1


def test_a_stored_command_of_no_known_form_keeps_working_until_changed(admin, app,
                                                                       monkeypatch):
    node = factories.make_node("edge-2")
    _store_legacy(node, reload_command="/opt/bin/reload-proxy --fast")
    # Sent back unchanged (as the edit form and a PUT do) it stays.
    nodes.update_node(admin, node.id, {"reload_command": "/opt/bin/reload-proxy --fast",
                                       "http_port": 8080})
    assert node.reload_command == "/opt/bin/reload-proxy --fast"
    with pytest.raises(ValidationError) as caught:
        nodes.update_node(admin, node.id, {"reload_command": "/opt/bin/reload-proxy --slow"})
    assert "is not a known nginx reload command" in caught.value.fields["reload_command"]
    monkeypatch.setitem(app.config, "ALLOW_CUSTOM_NODE_COMMANDS", True)
    nodes.update_node(admin, node.id, {"reload_command": "/opt/bin/reload-proxy --slow"})
    assert node.reload_command == "/opt/bin/reload-proxy --slow"


def test_a_new_engine_needs_commands_of_its_own(admin):
    node = factories.make_node("edge-3")
    with pytest.raises(ValidationError) as caught:
        nodes.update_node(admin, node.id, {"proxy_type": "caddy"})
    assert set(caught.value.fields) == {"test_command", "reload_command"}
    nodes.update_node(admin, node.id, {
        "proxy_type": "caddy", "test_command": "caddy validate --config /etc/caddy/Caddyfile",
        "reload_command": "systemctl reload caddy"})
    assert node.proxy_type == ProxyType.CADDY


# ----------------------------------------------------------------------------- API


@pytest.fixture()
def admin_h(admin):
    return api_headers(admin)


def test_the_api_takes_a_known_form(client, admin_h):
    node = factories.make_node("edge-4", ssh_user="deploy")
    response = client.patch(f"/api/v1/nodes/{node.id}", headers=admin_h, json={
        "test_command": "sudo -n /usr/sbin/nginx -t -c /etc/nginx/nginx.conf",
        "reload_command": "sudo -n systemctl reload nginx"})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["test_command"] == (
        "sudo -n /usr/sbin/nginx -t -c /etc/nginx/nginx.conf")


@pytest.mark.parametrize("payload", [
    {"test_command": "nginx -t; rm -rf /"},
    {"test_command": "sh -c 'nginx -t'"},
    {"reload_command": "nginx -s reload $(id)"},
    {"reload_command": "kill -HUP 1"},
])
def test_the_api_answers_422_naming_the_field_for_other_commands(client, admin_h, payload):
    node = factories.make_node("edge-5")
    response = client.patch(f"/api/v1/nodes/{node.id}", headers=admin_h, json=payload)
    assert response.status_code == 422
    [field] = payload
    assert set(response.get_json()["error"]["fields"]) == {field}
    assert _db.session.get(Node, node.id).test_command == "nginx -t"


def test_a_client_cannot_change_a_nodes_commands(client, alice):
    node = factories.make_node("edge-6")
    response = client.patch(f"/api/v1/nodes/{node.id}", headers=api_headers(alice),
                            json={"reload_command": "systemctl reload nginx"})
    assert response.status_code == 403
    assert _db.session.get(Node, node.id).reload_command == "nginx -s reload"


# ----------------------------------------------------------------------------- admin form


def _page(response: Any) -> str:
    return html.unescape(response.get_data(as_text=True))


def test_the_node_form_offers_the_known_forms_and_no_free_field(admin_client: FlaskClient):
    node = factories.make_node("edge-7")
    page = _page(admin_client.get(f"/admin/nodes/{node.id}/edit"))
    assert '<optgroup label="nginx">' in page and '<optgroup label="caddy">' in page
    assert '<option selected value="nginx -s reload">' in page
    assert '<option value="systemctl reload nginx">' in page
    assert "sudo -n" not in page  # reached as root
    assert "Custom reload command" not in page
    response = admin_client.post(f"/admin/nodes/{node.id}/edit", data={
        **_form(node), "reload_command": "systemctl reload nginx"})
    assert response.status_code == 302, _page(response)
    assert _db.session.get(Node, node.id).reload_command == "systemctl reload nginx"


def test_the_node_form_offers_sudo_forms_for_a_user_other_than_root(admin_client):
    node = factories.make_node("edge-8", ssh_user="deploy")
    page = _page(admin_client.get(f"/admin/nodes/{node.id}/edit"))
    assert '<option value="sudo -n systemctl reload nginx">' in page


def test_the_node_form_says_a_stored_unknown_command_must_become_a_known_form(
        admin_client, db):
    node = factories.make_node("edge-9")
    _store_legacy(node, test_command="/opt/bin/check-proxy")
    page = _page(admin_client.get(f"/admin/nodes/{node.id}/edit"))
    assert "/opt/bin/check-proxy (current, not a known form)" in page
    assert "a change must be a known form" in page
    # Saving other changes keeps it.
    response = admin_client.post(f"/admin/nodes/{node.id}/edit",
                                 data={**_form(node), "http_port": "8080"})
    assert response.status_code == 302, _page(response)
    db.session.expire_all()
    assert db.session.get(Node, node.id).test_command == "/opt/bin/check-proxy"
    # A forged choice is refused under its field.
    response = admin_client.post(f"/admin/nodes/{node.id}/edit",
                                 data={**_form(node), "test_command": "nginx -t; reboot"})
    assert response.status_code == 422
    assert "argument '-t;' has characters that are not allowed" in _page(response)


def test_custom_commands_get_a_free_field_when_allowed(app: Flask, admin_client, monkeypatch,
                                                      db):
    monkeypatch.setitem(app.config, "ALLOW_CUSTOM_NODE_COMMANDS", True)
    node = factories.make_node("edge-10")
    assert "Custom reload command" in _page(admin_client.get(f"/admin/nodes/{node.id}/edit"))
    response = admin_client.post(f"/admin/nodes/{node.id}/edit", data={
        **_form(node), "reload_command_custom": "/opt/bin/reload-proxy --graceful 'a b'"})
    assert response.status_code == 302, _page(response)
    db.session.expire_all()
    stored = db.session.get(Node, node.id).reload_command
    assert shlex.split(stored) == ["/opt/bin/reload-proxy", "--graceful", "a b"]
    response = admin_client.post(f"/admin/nodes/{node.id}/edit", data={
        **_form(node), "test_command_custom": "nginx -t 'open"})
    assert response.status_code == 422
    assert 'id="test_command_custom-error"' in _page(response)


def _form(node: Node) -> dict[str, str]:
    return {"name": node.name, "host": node.host, "ssh_port": str(node.ssh_port),
            "ssh_user": node.ssh_user, "proxy_type": node.proxy_type.value,
            "pool": node.pool.name, "config_dir": node.config_dir,
            "test_command": node.test_command, "reload_command": node.reload_command,
            "http_port": str(node.http_port), "https_port": str(node.https_port),
            "enabled": "y"}


def test_the_audit_log_shows_the_old_and_new_command(admin_client, admin):
    node = factories.make_node("edge-11")
    nodes.update_node(admin, node.id, {"reload_command": "systemctl reload nginx"})
    page = re.sub(r"<[^>]+>", "", _page(admin_client.get("/admin/audit?action=node.commands")))
    assert "reload_command: nginx -s reload → systemctl reload nginx" in " ".join(page.split())
