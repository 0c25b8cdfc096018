"""``/api/v1/notification-channels``: one's own channels only, secrets write-only,
webhook URLs checked against the address policy, test messages limited per user."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.extensions import limiter
from app.models import User
from app.services import notifiers
from tests.conftest import api_headers

TOKEN = "123456:" + "T" * 35
SECRET = "hook-secret-" + "x" * 20
URL = "/api/v1/notification-channels"


def create(client: FlaskClient, headers: dict[str, str], **body: Any) -> Any:
    return client.post(URL, json=body, headers=headers)


def test_channels_are_created_listed_changed_and_deleted_without_showing_secrets(
        client: FlaskClient, alice: User) -> None:
    headers = api_headers(alice)
    made = create(client, headers, name="phone", kind="telegram", target="42", secret=TOKEN)
    assert made.status_code == 201, made.get_json()
    channel = made.get_json()
    assert channel["has_secret"] and channel["events"] == ["deployment.failed", "alert.firing",
                                                         "alert.resolved", "test"]
    changed = client.patch(f"{URL}/{channel['id']}", json={"enabled": False,
                                                           "events": ["test"]},
                           headers=headers)
    assert changed.status_code == 200 and changed.get_json()["enabled"] is False
    hook = create(client, headers, name="hook", kind="webhook",
                  target="http://127.0.0.9/hook", secret=SECRET)
    assert hook.status_code == 201
    listed = client.get(URL, headers=headers)
    assert [c["name"] for c in listed.get_json()["items"]] == ["phone", "hook"]
    for answer in (made, changed, hook, listed, client.get(f"{URL}/{channel['id']}",
                                                           headers=headers)):
        body = answer.get_data(as_text=True)
        assert TOKEN not in body and SECRET not in body and '"secret"' not in body
    assert client.delete(f"{URL}/{channel['id']}", headers=headers).status_code == 204
    assert client.get(f"{URL}/{channel['id']}", headers=headers).status_code == 404


def test_client_cannot_reach_other_clients_channel(client: FlaskClient, alice: User,
                                                   bob: User) -> None:
    made = create(client, api_headers(alice), name="mail", kind="email",
                  target="alice@mail.test").get_json()
    theirs = api_headers(bob)
    path = f"{URL}/{made['id']}"
    assert client.get(path, headers=theirs).status_code == 404
    assert client.patch(path, json={"enabled": False}, headers=theirs).status_code == 404
    assert client.post(f"{path}/test", headers=theirs).status_code == 404
    assert client.get(f"{path}/deliveries", headers=theirs).status_code == 404
    assert client.delete(path, headers=theirs).status_code == 404
    assert client.get(URL, headers=theirs).get_json()["items"] == []


def test_a_webhook_to_an_internal_address_is_a_field_error(
        client: FlaskClient, alice: User, app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(app.config, "BACKEND_ALLOWED_NETWORKS", "")
    answer = create(client, api_headers(alice), name="hook", kind="webhook",
                    target="http://127.0.0.1:8080/", secret=SECRET)
    assert answer.status_code == 422
    assert "target" in answer.get_json()["error"]["fields"]


def test_a_test_message_is_accepted_then_recorded_and_limited_per_user(
        limited: Flask, alice: User, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(limited.config, "NOTIFICATION_TEST_LIMIT", "2 per hour")
    client = limited.test_client()
    headers = api_headers(alice)
    made = create(client, headers, name="mail", kind="email",
                  target="alice@mail.test").get_json()
    first = client.post(f"{URL}/{made['id']}/test", headers=headers)
    assert first.status_code == 202 and first.get_json()["status"] == "pending"
    notifiers.wait(first.get_json()["id"])
    [delivery] = client.get(f"{URL}/{made['id']}/deliveries",
                            headers=headers).get_json()["items"]
    # Mail is off in tests: a failure its owner can act on, not a server error.
    assert delivery["status"] == "failed"
    assert "mail is not set up on this server" in delivery["error"]
    assert client.post(f"{URL}/{made['id']}/test", headers=headers).status_code == 202
    assert client.post(f"{URL}/{made['id']}/test", headers=headers).status_code == 429
    limiter.reset()
