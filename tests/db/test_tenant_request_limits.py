"""A tenant who asks for deployments or certificates too often is refused with 429 and
``Retry-After``, through every door, while other users carry on untouched."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from flask import Flask

from app.extensions import limiter
from tests import factories
from tests.conftest import api_headers, login, make_app
from tests.processes import free_port


@pytest.fixture()
def limited(app: Flask, db) -> Iterator[Flask]:
    """An app with small per-user limits on.  The limiter is one object per process,
    so the session app's setting (off) is put back afterwards; the session app's key
    reads the nodes' secrets."""
    yield make_app(RATELIMIT_ENABLED=True, ENCRYPTION_KEYS=app.config["ENCRYPTION_KEYS"],
                   DEPLOY_REQUEST_LIMIT="3 per minute", ADMIN_DEPLOY_REQUEST_LIMIT="5 per minute",
                   CERTIFICATE_REQUEST_LIMIT="2 per hour",
                   ADMIN_CERTIFICATE_REQUEST_LIMIT="4 per hour")
    limiter.init_app(app)


def _retry_after(response, most: int) -> int:
    seconds = int(response.headers["Retry-After"])
    assert 0 < seconds <= most, seconds
    return seconds


def _assert_refused_in_json(response, what: str, most: int) -> None:
    assert response.status_code == 429
    _retry_after(response, most)
    error = response.get_json()["error"]
    assert error["code"] == "rate_limited"
    assert re.fullmatch(rf"Too many {what} \(at most \d+ per 1 \w+\)\. "
                        r"Try again in \d+ seconds\.", error["message"]), error["message"]


def test_a_client_hammering_deploy_gets_429_and_another_client_is_unaffected(
        limited, alice, bob):
    mine = factories.make_site(alice, "hammer.example.com")
    theirs = factories.make_site(bob, "neighbour.example.com")
    client = limited.test_client()
    alice_token, bob_token = api_headers(alice), api_headers(bob)
    # Every request counts, refused ones too (this pool has no node: 409).
    for n in range(3):
        response = client.post(f"/api/v1/sites/{mine.id}/deploy", headers=alice_token,
                               environ_base={"REMOTE_ADDR": f"10.0.0.{n + 1}"})
        assert response.status_code == 409
    refused = client.post(f"/api/v1/sites/{mine.id}/deploy", headers=alice_token,
                          environ_base={"REMOTE_ADDR": "10.0.9.9"})
    _assert_refused_in_json(refused, "deployment requests", 60)
    # Another tenant, from the same address, deploys as usual.
    assert client.post(f"/api/v1/sites/{theirs.id}/deploy",
                       headers=bob_token).status_code == 409
    # Another token of the same user does not help: the count is the user's.
    assert client.post(f"/api/v1/sites/{mine.id}/deploy",
                       headers=api_headers(alice)).status_code == 429


def test_the_panel_shares_the_users_budget_and_says_when_to_try_again(limited, alice, bob):
    site = factories.make_site(alice, "panel.example.com")
    token = api_headers(alice)
    api = limited.test_client()
    for _ in range(3):
        api.post(f"/api/v1/sites/{site.id}/deploy", headers=token)
    browser = limited.test_client()
    login(browser, alice)
    page = browser.post(f"/client/sites/{site.id}/deploy")
    assert page.status_code == 429
    seconds = _retry_after(page, 60)
    text = page.get_data(as_text=True)
    assert "Too many deployment requests (at most 3 per 1 minute)" in text
    assert re.search(r"Try again in (\d+) seconds", text).group(1) in {str(seconds),
                                                                       str(seconds + 1)}
    # Uploading a certificate starts a rollout: it spends the same budget.
    upload = browser.post(f"/client/sites/{site.id}/certificate", data={})
    assert upload.status_code == 429
    other = limited.test_client()
    login(other, bob)
    bobs = factories.make_site(bob, "bobs-panel.example.com")
    assert other.post(f"/client/sites/{bobs.id}/deploy").status_code == 302


def test_certificate_requests_have_their_own_budget(limited, alice):
    site = factories.make_site(alice, "certs.example.com")
    client = limited.test_client()
    token = api_headers(alice)
    for _ in range(2):
        assert client.post(f"/api/v1/sites/{site.id}/certificate",
                           headers=token).status_code != 429
    refused = client.post(f"/api/v1/sites/{site.id}/certificate", headers=token)
    _assert_refused_in_json(refused, "certificate requests", 3600)
    assert _retry_after(refused, 3600) > 60  # an hourly budget: not "in a minute"
    browser = limited.test_client()
    login(browser, alice)
    page = browser.post(f"/client/sites/{site.id}/certificate/issue")
    assert page.status_code == 429 and "Too many certificate requests" in page.get_data(
        as_text=True)
    # Deploying is a separate budget, still whole.
    assert client.post(f"/api/v1/sites/{site.id}/deploy", headers=token).status_code == 409
    # Reading the certificate is never limited.
    assert client.get(f"/api/v1/sites/{site.id}/certificate", headers=token).status_code == 200


def test_administrators_have_their_own_higher_limit(limited, admin, alice):
    client = limited.test_client()
    token = api_headers(admin)
    for _ in range(5):  # rollbacks and node deployments share the budget
        assert client.post("/api/v1/nodes/999999/rollback", headers=token,
                           json={"version": 1}).status_code == 404
    refused = client.post("/api/v1/nodes/999999/deploy", headers=token)
    _assert_refused_in_json(refused, "deployment requests", 60)
    browser = limited.test_client()
    login(browser, admin)
    assert browser.post("/admin/nodes/999999/deploy").status_code == 429
    # The administrator's exhausted budget is theirs alone.
    site = factories.make_site(alice, "after-admin.example.com")
    assert client.post(f"/api/v1/sites/{site.id}/deploy",
                       headers=api_headers(alice)).status_code == 409


def test_limits_count_in_memory_while_their_storage_is_out_of_reach(app, db, alice):
    """A deploy request is never a 500 because memcached is down: each process
    counts meanwhile."""
    silent = make_app(RATELIMIT_ENABLED=True,
                      RATELIMIT_STORAGE_URI=f"memcached://127.0.0.1:{free_port()}",
                      DEPLOY_REQUEST_LIMIT="2 per minute")
    try:
        site = factories.make_site(alice, "no-memcached.example.com")
        client, token = silent.test_client(), api_headers(alice)
        statuses = [client.post(f"/api/v1/sites/{site.id}/deploy", headers=token).status_code
                    for _ in range(3)]
        assert statuses == [409, 409, 429]
    finally:
        limiter.init_app(app)
