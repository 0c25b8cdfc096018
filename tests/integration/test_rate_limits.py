"""Login rate limits on real app processes, alone and sharing real memcached."""

import http.client
import json
import os
import re
import tempfile
import uuid
from contextlib import ExitStack
from urllib.parse import urlencode, urlsplit

import pytest

from tests.components import AppServer, app_env, flask_cli


def _request(url: str, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, str, http.client.HTTPResponse]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    return response.status, text, response


def login(url: str, username: str, password: str) -> int:
    return login_page(url, username, password)[0]


def login_page(url: str, username: str, password: str) -> tuple[int, str]:
    """What a browser does: fetch the form (session cookie + CSRF token), then post it."""
    _, page, response = _request(url, "GET", "/auth/login")
    cookie = response.getheader("Set-Cookie", "").split(";")[0]
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert token, page
    body = urlencode({"username": username, "password": password,
                      "csrf_token": token.group(1)}).encode()
    status, text, _ = _request(url, "POST", "/auth/login", body, {
        "Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie})
    return status, text


@pytest.fixture()
def database() -> str:
    path = os.path.join(tempfile.mkdtemp(prefix="rpcc-rl-"), "app.db")
    return f"sqlite:///{path}"


def _prepare(env: dict[str, str]) -> None:
    flask_cli(env, "db", "upgrade")
    flask_cli(env, "users", "create", "--username", "victim", "--email", "v@example.com",
              "--password-stdin", stdin="a-long-enough-password\n")


def test_login_limit_answers_429_with_a_clear_message(database):
    env = app_env(database, LOGIN_RATE_LIMIT="3 per minute")
    _prepare(env)
    server = AppServer(env)
    try:
        assert [login(server.url, "victim", f"wrong-{i}") for i in range(3)] == [200] * 3
        # Even the right password is refused once the limit is reached.
        status, text = login_page(server.url, "victim", "a-long-enough-password")
        assert status == 429 and "Too many attempts" in text
        # The API's token endpoint counts against the same limit (guessing through
        # the other door does not help), answered in the API's format.
        body = json.dumps({"username": "victim", "password": "wrong", "name": "t"}).encode()
        status, text = _request(server.url, "POST", "/api/v1/tokens", body,
                                {"Content-Type": "application/json"})[:2]
        assert status == 429
        assert json.loads(text)["error"]["code"] == "rate_limited"
    finally:
        server.stop()


def test_two_instances_share_the_limit_through_memcached(database, memcached):
    prefix = f"rl-{uuid.uuid4().hex[:8]}"
    env = app_env(database, LOGIN_RATE_LIMIT="4 per minute", RATELIMIT_STORAGE_URI=memcached,
                  RATELIMIT_KEY_PREFIX=prefix)
    _prepare(env)
    with ExitStack() as teardown:  # the first is stopped even if the second fails to start
        first = AppServer(env, "127.0.0.1")
        teardown.callback(first.stop)
        second = AppServer(env, "127.0.0.1")
        teardown.callback(second.stop)
        assert login(first.url, "victim", "wrong-1") != 429
        assert login(second.url, "victim", "wrong-2") != 429
        assert login(first.url, "victim", "wrong-3") != 429
        assert login(second.url, "victim", "wrong-4") != 429
        # The fifth attempt is refused by whichever instance receives it.
        assert login(first.url, "victim", "wrong-5") == 429
        assert login(second.url, "victim", "wrong-6") == 429


def test_without_shared_storage_each_instance_counts_alone(database):
    """The control for the test above: memory storage is per process."""
    env = app_env(database, LOGIN_RATE_LIMIT="2 per minute")
    _prepare(env)
    with ExitStack() as teardown:  # the first is stopped even if the second fails to start
        first = AppServer(env)
        teardown.callback(first.stop)
        second = AppServer(env)
        teardown.callback(second.stop)
        assert [login(first.url, "victim", "x") for _ in range(2)] == [200, 200]
        assert login(first.url, "victim", "x") == 429
        assert login(second.url, "victim", "x") == 200
