"""A deployment page refused a live stream (too many open) still follows the
deployment, by polling, in a real browser; the page that got the stream follows it
live.  The product runs as its own gunicorn with two threads: one stream place."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import Engine, create_engine, select, update
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from app.models import DeploymentStatus, Rollout, RolloutKind, User
from tests.components import AppServer, app_env, flask_cli
from tests.e2e.conftest import DESKTOP

PASSWORD = "a-long-enough-password"


@pytest.fixture()
def one_place() -> Iterator[tuple[AppServer, Engine]]:
    url = f"sqlite:///{os.path.join(tempfile.mkdtemp(prefix='rpcc-e2e-poll-'), 'app.db')}"
    env = app_env(url, SCHEDULER_ENABLED="false")
    flask_cli(env, "db", "upgrade")
    flask_cli(env, "users", "create", "--username", "watcher", "--email",
              "watcher@example.com", "--role", "client", "--password-stdin",
              stdin=PASSWORD + "\n")
    engine = create_engine(url, poolclass=NullPool)
    server = AppServer(env)
    try:
        yield server, engine
    finally:
        server.stop()
        engine.dispose()


def _running(engine: Engine) -> int:
    with Session(engine) as session:
        owner = session.scalar(select(User.id).where(User.username == "watcher"))
        rollout = Rollout(kind=RolloutKind.DEPLOY, owner_id=owner,
                          status=DeploymentStatus.RUNNING)
        session.add(rollout)
        session.commit()
        return rollout.id


def _finish(engine: Engine, rollout_id: int) -> None:
    with Session(engine) as session:
        session.execute(update(Rollout).where(Rollout.id == rollout_id)
                        .values(status=DeploymentStatus.SUCCEEDED))
        session.commit()


def _watch(page: Page, rollout_id: int, status: int) -> None:
    """Open the deployment's page and wait for its stream's answer."""
    with page.expect_response(lambda response: response.url.endswith(
            f"/deployments/{rollout_id}/events") and response.status == status):
        page.goto(f"/client/deployments/{rollout_id}")


def test_a_page_refused_a_stream_follows_the_deployment_by_polling(browser: Browser,
                                                                   one_place):
    server, engine = one_place
    context = browser.new_context(viewport=DESKTOP, base_url=server.url)
    errors: list[str] = []
    try:
        live, polled = context.new_page(), context.new_page()
        for page in (live, polled):
            page.on("pageerror", lambda error: errors.append(str(error)))
        live.goto("/auth/login")
        live.get_by_label("Username").fill("watcher")
        live.get_by_label("Password").fill(PASSWORD)
        live.get_by_role("button", name="Sign in").click()
        live.wait_for_load_state("load")
        first, second = _running(engine), _running(engine)
        _watch(live, first, 200)
        _watch(polled, second, 429)  # the one place is taken: this page polls
        for page in (live, polled):
            expect(page.locator("#deployment-status")).to_have_text("running")
        _finish(engine, second)
        expect(polled.locator("#deployment-status")).to_have_text("succeeded", timeout=30_000)
        _finish(engine, first)
        expect(live.locator("#deployment-status")).to_have_text("succeeded", timeout=30_000)
        assert not errors
    finally:
        context.close()
