"""Progress streams against a real gunicorn (the product's configuration, eight
threads in one worker): a flood of streams takes a bounded share of the threads and
the rest of the app keeps answering; streams end with their rollout; a client that
goes away gives its place back."""

from __future__ import annotations

import http.client
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from sqlalchemy import Engine, create_engine, select, update
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from app.models import DeploymentStatus, Rollout, RolloutKind, User
from tests.components import AppServer, app_env, flask_cli

PASSWORD = "a-long-enough-password"
THREADS = 8  # gunicorn.conf.py's default: streams get half of them
STREAMS_PER_PROCESS = THREADS // 2
STREAMS_PER_USER = 2  # config.py's default
TIMEOUT = 30.0  # a generous functional bound, not a performance figure


@pytest.fixture()
def database() -> Iterator[tuple[str, Engine]]:
    url = f"sqlite:///{os.path.join(tempfile.mkdtemp(prefix='rpcc-streams-'), 'app.db')}"
    engine = create_engine(url, poolclass=NullPool)
    yield url, engine
    engine.dispose()


@pytest.fixture()
def server(database: tuple[str, Engine]) -> Iterator[AppServer]:
    url, _ = database
    env = app_env(url, SCHEDULER_ENABLED="false")
    flask_cli(env, "db", "upgrade")
    for n in range(6):
        flask_cli(env, "users", "create", "--username", f"tenant{n}", "--email",
                  f"tenant{n}@example.com", "--role", "client", "--password-stdin",
                  stdin=PASSWORD + "\n")
    running = AppServer(env, threads=THREADS)
    try:
        yield running
    finally:
        running.stop()


def _running_rollout(engine: Engine, username: str) -> int:
    """A rollout of the user's that stays running until the test says otherwise."""
    with Session(engine) as session:
        owner = session.scalar(select(User.id).where(User.username == username))
        rollout = Rollout(kind=RolloutKind.DEPLOY, owner_id=owner, pool_id=None,
                          status=DeploymentStatus.RUNNING)
        session.add(rollout)
        session.commit()
        return rollout.id


def _finish(engine: Engine, rollout_ids: list[int]) -> None:
    with Session(engine) as session:
        session.execute(update(Rollout).where(Rollout.id.in_(rollout_ids))
                        .values(status=DeploymentStatus.SUCCEEDED))
        session.commit()


def _get(server: AppServer, path: str, headers: dict[str, str] | None = None,
         method: str = "GET", body: bytes | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=TIMEOUT)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def _sign_in(server: AppServer, username: str) -> str:
    """What a browser does: the form (session cookie and CSRF token), then the post;
    returns the signed-in session's cookie."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=TIMEOUT)
    conn.request("GET", "/auth/login")
    form = conn.getresponse()
    page = form.read().decode()
    cookie = form.getheader("Set-Cookie", "").split(";")[0]
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert token, page
    body = urlencode({"username": username, "password": PASSWORD,
                      "csrf_token": token.group(1)}).encode()
    conn.request("POST", "/auth/login", body=body, headers={
        "Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie})
    answer = conn.getresponse()
    answer.read()
    conn.close()
    assert answer.status == 302, answer.status
    return "; ".join(value.split(";")[0] for name, value in answer.getheaders()
                     if name.lower() == "set-cookie")


class Stream:
    """An EventSource as a raw socket (a keep-alive request, as browsers send):
    asks, then reads the answer's head, then the events; ``close`` drops the
    connection the way a closed tab does."""

    def __init__(self, server: AppServer, rollout_id: int, cookie: str) -> None:
        self.rollout_id = rollout_id
        self.sock = socket.create_connection((server.host, server.port), timeout=TIMEOUT)
        self.sock.sendall((
            f"GET /client/deployments/{rollout_id}/events HTTP/1.1\r\n"
            f"Host: {server.host}:{server.port}\r\nAccept: text/event-stream\r\n"
            f"Cookie: {cookie}\r\n\r\n").encode())
        self.buffer = b""
        self.status = 0
        self.headers: dict[str, str] = {}

    def read_head(self) -> int:
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, "the server closed the connection before answering"
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.lower(): v.strip() for k, _, v in
                        (line.partition(":") for line in lines[1:])}
        return self.status

    def read_to_end(self) -> bytes:
        """Everything until the server closes (the stream ended by itself, and the
        kept-alive connection then timed out)."""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return self.buffer
            self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def _health_seconds(server: AppServer) -> float:
    started = time.monotonic()
    response = _get(server, "/health")
    assert response.status == 200
    return time.monotonic() - started


def test_a_hundred_streams_at_once_leave_the_app_answering(server, database):
    _, engine = database
    users = [f"tenant{n}" for n in range(5)]
    cookies = {user: _sign_in(server, user) for user in users}
    rollouts = {user: _running_rollout(engine, user) for user in users}
    streams = [Stream(server, rollouts[user], cookies[user])
               for _ in range(20) for user in users]
    try:
        # Asked while all hundred are queued or held: the rest of the app answers.
        health = _health_seconds(server)
        statuses = [stream.read_head() for stream in streams]
        accepted = [s for s in streams if s.status == 200]
        refused = [s for s in streams if s.status == 429]
        assert len(accepted) + len(refused) == 100, sorted(set(statuses))
        assert len(accepted) == STREAMS_PER_PROCESS
        assert all(s.headers["retry-after"] == "30" for s in refused)
        assert all(s.headers["content-type"].startswith("text/event-stream")
                   for s in accepted)
        for user in users:
            assert sum(1 for s in accepted if s.rollout_id == rollouts[user]) <= STREAMS_PER_USER
        # With every stream place taken, pages still load, for another tenant too.
        assert _get(server, "/client/", {"Cookie": _sign_in(server, "tenant5")}).status == 200
        health_held = _health_seconds(server)
        print(f"\n/health with 100 streams asked: {health:.3f}s; with {len(accepted)} "
              f"held: {health_held:.3f}s; accepted {len(accepted)}, refused {len(refused)}")
        # The rollouts end: so do their streams, each with the final state.
        _finish(engine, list(rollouts.values()))
        for stream in accepted:
            stream.sock.settimeout(TIMEOUT)
            events = stream.read_to_end()
            assert b'"finished": true' in events
    finally:
        for stream in streams:
            stream.close()
    # Every place came back: new streams are accepted again.
    fresh = {user: _running_rollout(engine, user) for user in users[:2]}
    again = [Stream(server, fresh[user], cookies[user]) for user in users[:2] for _ in range(2)]
    try:
        assert [stream.read_head() for stream in again] == [200] * 4
    finally:
        for stream in again:
            stream.close()


def test_each_user_holds_at_most_their_share(server, database):
    _, engine = database
    cookie = _sign_in(server, "tenant0")
    rollout = _running_rollout(engine, "tenant0")
    mine = [Stream(server, rollout, cookie) for _ in range(STREAMS_PER_USER + 3)]
    other_cookie = _sign_in(server, "tenant1")
    theirs = Stream(server, _running_rollout(engine, "tenant1"), other_cookie)
    try:
        assert sorted(stream.read_head() for stream in mine) == (
            [200] * STREAMS_PER_USER + [429] * 3)
        assert theirs.read_head() == 200  # one tenant's flood is not another's refusal
    finally:
        for stream in [*mine, theirs]:
            stream.close()


def test_a_client_that_disconnects_gives_its_place_back(server, database):
    _, engine = database
    cookie = _sign_in(server, "tenant0")
    rollout = _running_rollout(engine, "tenant0")
    held = [Stream(server, rollout, cookie) for _ in range(STREAMS_PER_USER)]
    assert [stream.read_head() for stream in held] == [200] * STREAMS_PER_USER
    over = Stream(server, rollout, cookie)
    assert over.read_head() == 429
    over.close()
    held[0].close()  # the tab is closed: nothing tells the server but the socket
    deadline = time.monotonic() + TIMEOUT
    while True:
        retry = Stream(server, rollout, cookie)
        if retry.read_head() == 200:
            break
        retry.close()
        assert time.monotonic() < deadline, "the closed stream kept its place"
        time.sleep(0.2)
    retry.close()
    held[1].close()
