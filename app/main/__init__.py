"""Landing redirect and the health endpoint."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, redirect, url_for
from flask_login import current_user
from sqlalchemy import text

from app.extensions import db
from app.services import jobs

bp = Blueprint("main", __name__)


@bp.get("/")
def index() -> Any:
    if not current_user.is_authenticated:
        return redirect(url_for("auth.login"))
    return redirect(url_for("admin.dashboard" if current_user.is_admin else "client.dashboard"))


@bp.get("/health")
def health() -> Any:
    from app import __version__

    scheduler: dict[str, Any] = {"running": False, "heartbeat_age_seconds": None}
    try:
        db.session.execute(text("SELECT 1"))
        database = "ok"
        state = jobs.scheduler_state()
        scheduler = {"running": state.leader is not None,
                     "heartbeat_age_seconds": state.heartbeat_age_seconds}
        # Which process leads (host, pid) is for administrators only.
        if current_user.is_authenticated and current_user.is_admin:
            scheduler["leader"] = state.leader
    except Exception as exc:  # noqa: BLE001 - any failure means the database is down
        database = f"error: {type(exc).__name__}"
    status = 200 if database == "ok" else 503
    return jsonify({"status": "ok" if status == 200 else "degraded", "database": database,
                    "scheduler": scheduler, "version": __version__}), status
