"""The rollouts job launches again the rollouts whose run was lost: one whose run
died (its lease on the rollout expired unfinished) and one that waited longer than
ROLLOUT_RESUME_AFTER without ever starting (its queue or its process gone).  A
rollout whose run lives, one just asked for and one finished are left alone.  Without
it, such a rollout stays unfinished for ever and its site's deploy requests join it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from app.models import DeploymentStatus, Rollout
from app.models.base import utcnow
from app.services import deployments
from app.services.deployments import rollout as rollout_service
from tests import factories


@pytest.fixture()
def unreachable_node(admin):
    """A node nothing answers for: a rollout to it ends at once, failed."""
    return factories.make_node("gone", pool="default")


def queued(monkeypatch, alice, domain: str) -> int:
    """A rollout asked for and never started (as when its run was lost)."""
    site = factories.make_site(alice, domain)
    with monkeypatch.context() as patch:
        patch.setattr(rollout_service, "launch", lambda rollout_id: None)
        return deployments.deploy_site(alice, site.id).id


def set_state(db, rollout_id: int, **values) -> None:
    db.session.execute(update(Rollout).where(Rollout.id == rollout_id).values(**values))
    db.session.commit()


def state(db, rollout_id: int) -> tuple[DeploymentStatus, str]:
    db.session.expire_all()
    rollout = db.session.get(Rollout, rollout_id)
    return rollout.status, rollout.runner


def test_lost_rollouts_are_launched_again_and_the_others_left_alone(
        db, app, alice, unreachable_node, monkeypatch):
    now = utcnow()
    long_ago = now - timedelta(seconds=app.config["ROLLOUT_RESUME_AFTER"] + 60)
    never_started = queued(monkeypatch, alice, "never.example.com")
    set_state(db, never_started, created_at=long_ago)
    died = queued(monkeypatch, alice, "died.example.com")
    set_state(db, died, status=DeploymentStatus.RUNNING, started_at=long_ago,
              created_at=long_ago, runner="dead:1:run", runner_expires_at=now - timedelta(1))
    alive = queued(monkeypatch, alice, "alive.example.com")
    set_state(db, alive, status=DeploymentStatus.RUNNING, started_at=long_ago,
              created_at=long_ago, runner="live:2:run",
              runner_expires_at=now + timedelta(minutes=5))
    just_asked = queued(monkeypatch, alice, "just.example.com")
    finished = queued(monkeypatch, alice, "done.example.com")
    set_state(db, finished, status=DeploymentStatus.SUCCEEDED, created_at=long_ago,
              finished_at=long_ago)

    assert deployments.resume_lost() == "2 rollout(s) launched again"

    for rollout_id in (never_started, died):
        done = deployments.wait(rollout_id, timeout=60)
        # It ran: its node could not be reached, so it failed, and says why.
        assert done.status == DeploymentStatus.FAILED
        assert all(d.status.finished for d in done.deployments)
        assert done.runner_expires_at is None
    assert state(db, alive) == (DeploymentStatus.RUNNING, "live:2:run")
    assert state(db, just_asked) == (DeploymentStatus.PENDING, "")
    assert state(db, finished)[0] == DeploymentStatus.SUCCEEDED
    # Nothing more is lost: the next run of the job launches nothing.
    assert deployments.resume_lost() == "no rollout was lost"


def test_with_the_task_engine_a_queued_rollout_waits_the_visibility_timeout(
        db, app, alice, unreachable_node, monkeypatch):
    """A task may queue behind others for up to the broker's visibility timeout: only
    after it is a rollout that never started counted lost."""
    monkeypatch.setitem(app.config, "CELERY_BROKER_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setitem(app.config, "CELERY_VISIBILITY_TIMEOUT", 3600.0)
    waiting = queued(monkeypatch, alice, "queued.example.com")
    set_state(db, waiting, created_at=utcnow() - timedelta(
        seconds=app.config["ROLLOUT_RESUME_AFTER"] + 60))
    assert deployments.resume_lost() == "no rollout was lost"
    set_state(db, waiting, created_at=utcnow() - timedelta(seconds=3700))
    assert deployments.resume_lost() == "1 rollout(s) launched again"
    # No broker answers here: the work ran in this process, as the executor falls back.
    assert deployments.wait(waiting, timeout=60).status == DeploymentStatus.FAILED
