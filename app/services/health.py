"""What ``/health`` reports: whether the database answers and whether a scheduler
leads.  Load balancers and monitors ask anonymously, so the report is short unless
an administrator asks."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from app.extensions import db
from app.models import User
from app.services import jobs


def report(viewer: User | None) -> dict[str, Any]:
    """``status`` (ok or degraded), ``database`` and ``scheduler``; which process leads
    the scheduler (host, pid) only for an administrator ``viewer``."""
    scheduler: dict[str, Any] = {"running": False, "heartbeat_age_seconds": None}
    try:
        db.session.execute(text("SELECT 1"))
        database = "ok"
        state = jobs.scheduler_state()
        scheduler = {"running": state.leader is not None,
                     "heartbeat_age_seconds": state.heartbeat_age_seconds}
        if viewer is not None and viewer.is_admin:
            scheduler["leader"] = state.leader
    except Exception as exc:  # noqa: BLE001 - any failure means the database is down
        database = f"error: {type(exc).__name__}"
    return {"status": "ok" if database == "ok" else "degraded", "database": database,
            "scheduler": scheduler}
