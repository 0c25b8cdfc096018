"""Sign-in limits on real gunicorn processes: alone, and as two app instances of two
workers each sharing a real memcached and a real PostgreSQL.  Clients bind distinct
loopback source addresses, so the app sees an attacker and the account's owner come
from different addresses."""

from __future__ import annotations

import http.client
import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from urllib.parse import urlencode

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.components import AppServer, app_env, flask_cli, postgres_database

PASSWORD = "a-long-enough-password"
LOCKED = "auth.sign_in_locked"


class Answer:
    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.status = response.status
        self.headers = response.headers
        self.text = response.read().decode()


def _request(server: AppServer, source: str, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> Answer:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30,
                                      source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        return Answer(conn.getresponse())
    finally:
        conn.close()


def form(server: AppServer, source: str, username: str, password: str) -> Answer:
    """What a browser does: fetch the form (session cookie + CSRF token), then post it."""
    page = _request(server, source, "GET", "/auth/login")
    cookie = (page.headers.get("Set-Cookie") or "").split(";")[0]
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page.text)
    assert token, page.text
    body = urlencode({"username": username, "password": password,
                      "csrf_token": token.group(1)}).encode()
    return _request(server, source, "POST", "/auth/login", body, {
        "Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie})


def api(server: AppServer, source: str, username: str, password: str) -> Answer:
    body = json.dumps({"username": username, "password": password, "name": "t"}).encode()
    return _request(server, source, "POST", "/api/v1/tokens", body,
                    {"Content-Type": "application/json"})


def retry_after(answer: Answer, most: int) -> int:
    assert answer.status == 429, (answer.status, answer.text)
    seconds = int(answer.headers["Retry-After"])
    assert 0 < seconds <= most, seconds
    return seconds


def create_user(env: dict[str, str], username: str, role: str = "client") -> None:
    flask_cli(env, "users", "create", "--username", username, "--email",
              f"{username}@example.com", "--role", role, "--password-stdin",
              stdin=PASSWORD + "\n")


@pytest.fixture()
def sqlite_database() -> str:
    path = os.path.join(tempfile.mkdtemp(prefix="rpcc-rl-"), "app.db")
    return f"sqlite:///{path}"


def test_a_locked_sign_in_answers_429_with_retry_after_in_a_page_and_in_json(sqlite_database):
    env = app_env(sqlite_database, SIGN_IN_USER_ADDRESS_FAILURES="3", SIGN_IN_BACKOFF="30",
                  SCHEDULER_ENABLED="0")
    flask_cli(env, "db", "upgrade")
    create_user(env, "victim")
    server = AppServer(env)
    try:
        assert [form(server, "127.0.0.1", "victim", f"wrong-{n}").status
                for n in range(3)] == [200] * 3
        # Even the right password is refused from this address for now.
        page = form(server, "127.0.0.1", "victim", PASSWORD)
        retry_after(page, 30)
        assert "Too many failed sign-ins" in page.text
        # The token API is the same door, answered in the API's format.
        answer = api(server, "127.0.0.1", "victim", PASSWORD)
        retry_after(answer, 30)
        assert json.loads(answer.text)["error"]["code"] == "rate_limited"
    finally:
        server.stop()


def test_without_shared_storage_each_instance_counts_alone(sqlite_database):
    """The control for the shared tests below: memory storage is per process."""
    env = app_env(sqlite_database, SIGN_IN_USER_ADDRESS_FAILURES="2", SCHEDULER_ENABLED="0")
    flask_cli(env, "db", "upgrade")
    create_user(env, "victim")
    with ExitStack() as teardown:  # the first is stopped even if the second fails to start
        first = AppServer(env)
        teardown.callback(first.stop)
        second = AppServer(env)
        teardown.callback(second.stop)
        assert [api(first, "127.0.0.1", "victim", "x").status for _ in range(2)] == [401, 401]
        assert api(first, "127.0.0.1", "victim", "x").status == 429
        assert api(second, "127.0.0.1", "victim", "x").status == 401


# Thresholds of the shared deployment below: a username is locked from one address
# after 3 failures, everywhere after 4; fresh addresses wait at most 2 seconds.
FRESH_WAIT = 2
BACKOFF = 300
BACKOFF_MAX = 900


@pytest.fixture(scope="module")
def shared(memcached: str) -> Iterator[tuple[list[AppServer], str]]:
    """Two app instances of two gunicorn workers each, on one PostgreSQL database,
    counting in one memcached (a key prefix of their own)."""
    with postgres_database("rpcc_limits") as database, ExitStack() as teardown:
        env = app_env(database, RATELIMIT_STORAGE_URI=memcached,
                      RATELIMIT_KEY_PREFIX=f"rl-{uuid.uuid4().hex[:8]}",
                      SIGN_IN_USER_ADDRESS_FAILURES="3", SIGN_IN_USER_FAILURES="4",
                      SIGN_IN_ADDRESS_FAILURES="100", SIGN_IN_BACKOFF=str(BACKOFF),
                      SIGN_IN_BACKOFF_MAX=str(BACKOFF_MAX),
                      SIGN_IN_FRESH_WAIT=str(FRESH_WAIT), SCHEDULER_ENABLED="0")
        for username in ("burst-victim", "owner"):
            create_user(env, username)
        create_user(env, "chief", "admin")
        servers = []
        for _ in range(2):
            server = AppServer(env, workers=2)
            teardown.callback(server.stop)
            servers.append(server)
        yield servers, database


def test_a_parallel_burst_over_two_instances_and_four_workers_checks_at_most_three(shared):
    servers, _ = shared
    attacker = "127.0.0.5"

    def guess(n: int) -> int:
        door = api if n % 2 else form
        return door(servers[n % 2], attacker, "burst-victim", f"guess-{n}").status

    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(guess, range(24)))
    checked = [s for s in statuses if s != 429]
    # One memcached counts for all four processes: the third failure locks the name
    # for this address before a fourth password is even looked at.
    assert 1 <= len(checked) <= 3 and set(checked) <= {200, 401}, statuses
    # The lock is as long as the guesses counted when it was taken make it: racing
    # guesses counted before it may double it, up to the longest lock.
    for server in servers:
        retry_after(api(server, attacker, "burst-victim", PASSWORD), BACKOFF_MAX)
        retry_after(form(server, attacker, "burst-victim", PASSWORD), BACKOFF_MAX)


def test_the_owner_gets_in_from_a_fresh_address_while_the_attackers_stay_locked(shared):
    servers, database = shared
    first, second = servers
    attacker, accomplice, home = "127.0.0.6", "127.0.0.7", "127.0.0.8"
    # Three failures from the attacker, through both instances and both doors...
    assert form(first, attacker, "owner", "guess-1").status == 200
    assert api(second, attacker, "owner", "guess-2").status == 401
    assert form(second, attacker, "owner", "guess-3").status == 200
    # ...and a fourth from the accomplice lock the username everywhere.
    assert api(first, accomplice, "owner", "guess-4").status == 401
    retry_after(api(second, attacker, "owner", PASSWORD), BACKOFF)
    retry_after(form(first, accomplice, "owner", PASSWORD), BACKOFF)
    # The owner, at home, waits at most the fresh wait, whichever instance answers.
    deadline = time.monotonic() + FRESH_WAIT + 30  # generous: the clock is not under test
    while (answer := api(second, home, "owner", PASSWORD)).status != 201:
        time.sleep(retry_after(answer, FRESH_WAIT))
        assert time.monotonic() < deadline
    assert form(first, home, "owner", PASSWORD).status == 302
    # The attackers are still held back.
    retry_after(api(first, attacker, "owner", PASSWORD), BACKOFF)
    retry_after(api(second, accomplice, "owner", PASSWORD), BACKOFF)
    # Both locks are in the audit log, by no one, about the owner's account.
    engine = create_engine(database, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            owner_id = conn.execute(text("SELECT id FROM users WHERE username = 'owner'")).scalar()
            rows = conn.execute(text(
                "SELECT user_id, username, ip, details FROM audit_log WHERE action = :action "
                "AND object_type = 'user' AND object_id = :owner ORDER BY id"),
                {"action": LOCKED, "owner": str(owner_id)}).all()
    finally:
        engine.dispose()
    assert [tuple(row) for row in rows] == [
        (None, "system", attacker, {"scope": "user_address", "seconds": BACKOFF, "failures": 3}),
        (None, "system", accomplice, {"scope": "user", "seconds": BACKOFF, "failures": 4}),
    ]


def test_an_administrator_under_attack_from_many_addresses_still_gets_in(shared):
    servers, _ = shared
    attackers = [f"127.0.2.{n}" for n in range(1, 9)]
    for n, attacker in enumerate(attackers * 2):
        assert api(servers[n % 2], attacker, "chief", f"guess-{n}").status in (401, 429)
    deadline = time.monotonic() + FRESH_WAIT + 30  # generous: the clock is not under test
    while (answer := form(servers[1], "127.0.2.200", "chief", PASSWORD)).status != 302:
        time.sleep(retry_after(answer, FRESH_WAIT))
        assert time.monotonic() < deadline
