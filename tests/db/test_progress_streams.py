"""Progress streams through the app are bounded: per user and per process, in time,
and a client that goes away gives its place back (the slots themselves are in
tests/unit/test_progress_streams.py, the real gunicorn side in
tests/integration/test_progress_streams.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from flask import Flask, g, request_started
from sqlalchemy import update

from app.extensions import db as _db
from app.extensions import limiter
from app.models import DeploymentStatus, Rollout
from app.stream_slots import stream_slots
from tests import factories
from tests.conftest import login, make_app


@pytest.fixture()
def streams(app: Flask, db) -> Iterator[Flask]:
    """An app of its own (its places start empty): one stream per user, two in all.

    A stream being read keeps its request context pushed, so the requests after it
    share its ``g``: the signed-in user cached there is forgotten at each request
    (as conftest does for the session's app), and streams are closed last first."""
    streaming = make_app(PROGRESS_STREAMS_PER_USER=1, PROGRESS_STREAMS_PER_PROCESS=2,
                         PROGRESS_STREAM_HEARTBEAT=0.0)

    def forget(sender: Flask, **extra: object) -> None:
        g.pop("_login_user", None)

    with request_started.connected_to(forget, streaming):
        yield streaming
    limiter.init_app(app)


def _set_status(rollout: Rollout, status: DeploymentStatus) -> None:
    """By statement: the session at hand may be an open stream's, not the test's."""
    _db.session.execute(update(Rollout).where(Rollout.id == rollout.id).values(status=status))
    _db.session.commit()


def _running(owner) -> Rollout:
    rollout = factories.make_rollout(factories.make_site(owner))
    _set_status(rollout, DeploymentStatus.RUNNING)
    return rollout


def _signed_in(app: Flask, user):
    browser = app.test_client()
    login(browser, user)
    return browser


def _events(browser, rollout: Rollout):
    return browser.get(f"/client/deployments/{rollout.id}/events")


def _first_state(response) -> dict:
    chunks = iter(response.response)
    chunk = next(chunks)
    while not chunk.startswith(b"data: "):
        chunk = next(chunks)
    return json.loads(chunk.decode().removeprefix("data: "))


def test_a_user_beyond_the_cap_gets_429_and_another_user_still_streams(streams, alice, bob):
    carol = factories.make_user("client", "carol")
    mine, theirs, hers = _running(alice), _running(bob), _running(carol)
    alice_browser, bob_browser = _signed_in(streams, alice), _signed_in(streams, bob)
    held = _events(alice_browser, mine)
    assert held.status_code == 200 and _first_state(held)["status"] == "running"
    refused = _events(alice_browser, mine)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "30"
    assert "Try again in 30 seconds" in refused.get_data(as_text=True)
    # The page's fallback: one state as JSON, which holds no place.
    snapshot = alice_browser.get(f"/client/deployments/{mine.id}/events",
                                 headers={"Accept": "application/json"})
    assert snapshot.status_code == 200
    assert snapshot.get_json()["status"] == "running" and not snapshot.get_json()["finished"]
    other = _events(bob_browser, theirs)
    assert other.status_code == 200
    # The process's cap is reached: anyone else is refused until a stream ends.
    carol_browser = _signed_in(streams, carol)
    assert _events(carol_browser, hers).status_code == 429
    other.close()
    hers_now = _events(carol_browser, hers)
    assert hers_now.status_code == 200
    assert stream_slots(streams).open_streams() == 2
    hers_now.close()
    held.close()
    assert stream_slots(streams).open_streams() == 0


def test_a_client_that_disconnects_gives_its_place_back(streams, alice):
    rollout = _running(alice)
    browser = _signed_in(streams, alice)
    started = _events(browser, rollout)
    _first_state(started)
    assert stream_slots(streams).open_streams(alice.id) == 1
    started.close()  # what the server does when the client has gone
    assert stream_slots(streams).open_streams(alice.id) == 0
    never_read = _events(browser, rollout)
    assert never_read.status_code == 200
    never_read.close()  # closed before a single chunk: its place comes back too
    assert stream_slots(streams).open_streams() == 0
    assert _events(browser, rollout).status_code == 200


def test_a_stream_ends_with_its_rollout_and_gives_its_place_back(streams, alice):
    rollout = _running(alice)
    response = _events(_signed_in(streams, alice), rollout)
    chunks = iter(response.response)
    assert next(chunks).startswith(b"data: ")
    # Nothing changed: a keep-alive comment (every poll here), which also finds a
    # vanished client where no check of the socket can.
    assert next(chunks) == b": still running\n\n"
    _set_status(rollout, DeploymentStatus.SUCCEEDED)
    rest = b"".join(chunks)  # ends: the generator returns after the final state
    final = [line for line in rest.decode().splitlines() if line.startswith("data: ")][-1]
    assert json.loads(final.removeprefix("data: "))["finished"] is True
    assert stream_slots(streams).open_streams() == 0


def test_a_stream_ends_after_its_longest_duration(app, db, alice):
    quick = make_app(PROGRESS_STREAM_SECONDS=1.0)
    try:
        rollout = _running(alice)
        response = _events(_signed_in(quick, alice), rollout)
        body = response.get_data()  # returns: the stream ended by itself
        assert body.count(b"data: ") == 1 and b'"finished": false' in body
        assert stream_slots(quick).open_streams() == 0
    finally:
        limiter.init_app(app)
