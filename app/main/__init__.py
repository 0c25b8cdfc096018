"""Landing redirect, the health endpoint and the Prometheus metrics."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, redirect, request, url_for
from flask_login import current_user

from app import observability
from app.models import User
from app.services import fleet_gauges, tokens
from app.services import health as health_service

bp = Blueprint("main", __name__)


@bp.get("/")
def index() -> Any:
    if not current_user.is_authenticated:
        return redirect(url_for("auth.login"))
    return redirect(url_for("admin.dashboard" if current_user.is_admin else "client.dashboard"))


@bp.get("/health")
def health() -> Any:
    """Anyone (a load balancer, a monitor) learns ok or degraded and what is
    degraded; an administrator, signed in or with an API token, the details.  503
    only when this process cannot reach the database: the one failure a load
    balancer should route around (a scheduler that stopped is the whole
    deployment's, and every instance would answer the same)."""
    from app import __version__

    viewer = _signed_in_or_token_user()
    report = health_service.report(viewer)
    if viewer is not None and viewer.is_admin:
        report["version"] = __version__
    return jsonify(report), 503 if "database" in report["degraded"] else 200


def _signed_in_or_token_user() -> User | None:
    """The user of the session, else of a valid bearer token; an invalid token is no
    reason to refuse a health check, which then answers as to anyone."""
    if current_user.is_authenticated:
        user: User = current_user._get_current_object()
        return user
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    token = tokens.authenticate_token(credentials.strip())
    return token.user if token is not None else None


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus scrapes here.  With ``METRICS_TOKEN`` set, only with that bearer
    token, and then node names are exposed too."""
    expected = current_app.config["METRICS_TOKEN"]
    if expected and not observability.bearer_matches(
            request.headers.get("Authorization", ""), expected):
        return Response("send the metrics token: 'Authorization: Bearer <token>'\n", 401,
                        {"WWW-Authenticate": "Bearer"}, mimetype="text/plain")
    body = observability.exposition(fleet_gauges.read_fleet_gauges(),
                                    node_names=bool(expected))
    return Response(body, content_type=observability.CONTENT_TYPE)
