"""Failed sign-ins lock the attacker's addresses with a growing backoff (429 with
``Retry-After``), through the form and the token API together, while the account's
owner still gets in from an address that has not failed, after a short wait."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.extensions import limiter
from app.services import audit
from app.services.sign_in_limits import ADDRESS, LOCKED, USER, USER_ADDRESS
from tests import factories
from tests.conftest import make_app
from tests.processes import free_port

# Client addresses as the app sees them (no traffic goes anywhere).
ATTACKER, ACCOMPLICE, OWNER = "127.0.0.2", "127.0.0.4", "127.0.0.3"
FRESH_WAIT = 1
BACKOFF, BACKOFF_MAX = 60, 120
LIMITS = {"SIGN_IN_USER_ADDRESS_FAILURES": 3, "SIGN_IN_USER_FAILURES": 5,
          "SIGN_IN_ADDRESS_FAILURES": 8, "SIGN_IN_BACKOFF": BACKOFF,
          "SIGN_IN_BACKOFF_MAX": BACKOFF_MAX, "SIGN_IN_FRESH_WAIT": FRESH_WAIT}


@pytest.fixture()
def limited(app: Flask, db) -> Iterator[FlaskClient]:
    """An app with small sign-in limits on and storage of its own.  The limiter is one
    object per process, so the session app's setting (off) is put back afterwards."""
    yield make_app(RATELIMIT_ENABLED=True, **LIMITS).test_client()
    limiter.init_app(app)


def form(client: FlaskClient, username: str, password: str, address: str) -> int:
    response = client.post("/auth/login", data={"username": username, "password": password},
                           environ_base={"REMOTE_ADDR": address})
    return response.status_code


def api(client: FlaskClient, username: str, password: str, address: str) -> int:
    response = client.post("/api/v1/tokens", json={"username": username, "password": password},
                           environ_base={"REMOTE_ADDR": address})
    return response.status_code


def sign_in_after_waiting(client: FlaskClient, username: str, address: str,
                          most: int) -> None:
    """Sign in with the right password, waiting as ``Retry-After`` says, which must
    never be more than ``most`` seconds."""
    deadline = time.monotonic() + most + 30  # generous: the clock is not under test
    while True:
        response = client.post("/auth/login", data={
            "username": username, "password": factories.PASSWORD},
            environ_base={"REMOTE_ADDR": address})
        if response.status_code == 302:
            return
        assert response.status_code == 429, response.get_data(as_text=True)
        seconds = int(response.headers["Retry-After"])
        assert 0 < seconds <= most
        assert time.monotonic() < deadline
        time.sleep(seconds)


def test_a_burst_of_wrong_passwords_is_answered_429_with_retry_after(limited, alice):
    assert [form(limited, "alice", f"wrong-{n}", ATTACKER) for n in range(3)] == [200] * 3
    refused = limited.post("/api/v1/tokens", json={"username": "alice", "password": "guess"},
                           environ_base={"REMOTE_ADDR": ATTACKER})
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == str(BACKOFF)
    assert refused.get_json()["error"] == {
        "code": "rate_limited", "message": f"Too many failed sign-ins. Try again in {BACKOFF} "
                                           "seconds."}
    # The form says the same in a page; the right password is not even checked.
    page = limited.post("/auth/login", data={"username": "alice", "password": factories.PASSWORD},
                        environ_base={"REMOTE_ADDR": ATTACKER})
    assert page.status_code == 429
    assert 0 < int(page.headers["Retry-After"]) <= BACKOFF
    assert "Too many failed sign-ins" in page.get_data(as_text=True)
    # A different spelling of the name is the same account.
    assert form(limited, " Alice ", "guess", ATTACKER) == 429


def test_the_form_and_the_api_count_against_one_limit(limited, alice):
    assert form(limited, "alice", "wrong-1", ATTACKER) == 200
    assert api(limited, "alice", "wrong-2", ATTACKER) == 401
    assert form(limited, "alice", "wrong-3", ATTACKER) == 200
    assert api(limited, "alice", factories.PASSWORD, ATTACKER) == 429
    assert form(limited, "alice", factories.PASSWORD, ATTACKER) == 429


def test_the_owner_signs_in_from_a_fresh_address_within_the_fresh_wait(limited, alice):
    # Two attacking addresses make five failures: alice is locked everywhere...
    assert [form(limited, "alice", "x", ATTACKER) for _ in range(3)] == [200] * 3
    assert [api(limited, "alice", "x", ACCOMPLICE) for _ in range(2)] == [401] * 2
    # ...the attackers' addresses stay locked, even with the right password...
    assert form(limited, "alice", factories.PASSWORD, ATTACKER) == 429
    assert api(limited, "alice", factories.PASSWORD, ACCOMPLICE) == 429
    # ...and alice, from an address that has not failed, gets in within the fresh wait.
    sign_in_after_waiting(limited, "alice", OWNER, FRESH_WAIT)
    assert api(limited, "alice", factories.PASSWORD, OWNER) == 201
    # Her success does not unlock the attackers.
    assert api(limited, "alice", factories.PASSWORD, ACCOMPLICE) == 429


def test_an_administrator_is_never_locked_out_for_good(limited, admin):
    attackers = [f"127.0.1.{n}" for n in range(1, 7)]
    waits = []
    for n in range(60):
        response = limited.post("/api/v1/tokens", json={"username": admin.username,
                                                       "password": f"guess-{n}"},
                                environ_base={"REMOTE_ADDR": attackers[n % len(attackers)]})
        assert response.status_code in (401, 429)
        if response.status_code == 429:
            waits.append(int(response.headers["Retry-After"]))
    assert waits and max(waits) <= BACKOFF_MAX
    # However long the attack, a fresh address lets the administrator in.
    sign_in_after_waiting(limited, admin.username, OWNER, FRESH_WAIT)


def test_a_lock_is_audited_against_the_user_and_shown_in_the_audit_log(
        limited, alice, admin, admin_client):
    for n in range(3):
        form(limited, "alice", f"wrong-{n}", ATTACKER)
    for n in range(2):
        api(limited, "alice", f"wrong-{n}", ACCOMPLICE)
    entries = audit.list_entries(admin, action=LOCKED).items
    # The attacker's third failure locked alice from that address; the accomplice's
    # second, the fifth in all, locked her username.
    assert sorted((e.details["scope"], e.ip) for e in entries) == [
        (USER, ACCOMPLICE), (USER_ADDRESS, ATTACKER)]
    for entry in entries:
        assert (entry.user_id, entry.username) == (None, "system")
        assert (entry.object_type, entry.object_id) == ("user", str(alice.id))
        assert entry.details["seconds"] == BACKOFF
    page = admin_client.get(f"/admin/audit?action={LOCKED}").get_data(as_text=True)
    assert LOCKED in page and "user alice" in page and ACCOMPLICE in page


def test_a_success_resets_that_users_failures_from_that_address(limited, alice):
    for _ in range(2):
        assert [form(limited, "alice", "typo", OWNER) for _ in range(2)] == [200, 200]
        assert form(limited, "alice", factories.PASSWORD, OWNER) == 302
        limited.post("/auth/logout")
    # Four failures from one address, none locked: each success started a new count.
    assert form(limited, "alice", "typo", OWNER) == 200


def test_an_address_guessing_many_names_is_locked_for_every_name(limited, bob, admin):
    for n in range(8):
        assert api(limited, f"nobody-{n}", "guess", ATTACKER) == 401
    assert api(limited, "bob", factories.PASSWORD, ATTACKER) == 429
    assert api(limited, "bob", factories.PASSWORD, OWNER) == 201
    entries = audit.list_entries(admin, action=LOCKED).items
    # Names that are no account are not written down; the address is.
    assert [(e.object_type, e.object_id, e.details["scope"], e.ip) for e in entries] == [
        ("address", "", ADDRESS, ATTACKER)]


def test_sign_in_works_without_limits_when_their_storage_is_unreachable(app, db, alice):
    closed = free_port()
    client = make_app(RATELIMIT_ENABLED=True, **LIMITS,
                      RATELIMIT_STORAGE_URI=f"memcached://127.0.0.1:{closed}").test_client()
    try:
        assert [form(client, "alice", "x", ATTACKER) for _ in range(5)] == [200] * 5
        assert form(client, "alice", factories.PASSWORD, ATTACKER) == 302
    finally:
        limiter.init_app(app)
