"""Landing redirect and the health endpoint."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, redirect, url_for
from flask_login import current_user

from app.services import health as health_service

bp = Blueprint("main", __name__)


@bp.get("/")
def index() -> Any:
    if not current_user.is_authenticated:
        return redirect(url_for("auth.login"))
    return redirect(url_for("admin.dashboard" if current_user.is_admin else "client.dashboard"))


@bp.get("/health")
def health() -> Any:
    from app import __version__

    viewer = current_user._get_current_object() if current_user.is_authenticated else None
    report = health_service.report(viewer)
    status = 200 if report["status"] == "ok" else 503
    return jsonify({**report, "version": __version__}), status
