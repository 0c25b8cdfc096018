"""What ``/health`` reports: whether the database answers and whether a scheduler
leads.  Load balancers and monitors ask anonymously, so they learn only ok or
degraded and which components are degraded: no process, runner or version, which
would tell an attacker what runs where.  Administrators get the details."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from app.extensions import db
from app.models import User
from app.services import jobs


def report(viewer: User | None) -> dict[str, Any]:
    """``status`` (ok or degraded) and the names of the ``degraded`` components for
    anyone; for an administrator ``viewer`` also ``database`` (ok, or the kind of
    error) and ``scheduler`` (whether a process runs the jobs, the age of its last
    heartbeat, which process leads).

    The scheduler is degraded when no process leads it: jobs (health checks,
    renewals) have stopped for the whole deployment."""
    degraded: list[str] = []
    scheduler: dict[str, Any] = {"running": False, "heartbeat_age_seconds": None,
                                 "leader": None}
    try:
        db.session.execute(text("SELECT 1"))
        database = "ok"
        state = jobs.scheduler_state()
        scheduler = {"running": state.leader is not None,
                     "heartbeat_age_seconds": state.heartbeat_age_seconds,
                     "leader": state.leader}
        if not scheduler["running"]:
            degraded.append("scheduler")
    except Exception as exc:  # noqa: BLE001 - any failure means the database is down
        database = f"error: {type(exc).__name__}"
        degraded.append("database")
    summary: dict[str, Any] = {"status": "degraded" if degraded else "ok",
                               "degraded": degraded}
    if viewer is None or not viewer.is_admin:
        return summary
    return {**summary, "database": database, "scheduler": scheduler}
