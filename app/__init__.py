"""Application factory.  ``create_app`` wires things together and does no work:
no tables, no network, no threads."""

from __future__ import annotations

import logging
import os
import secrets
from typing import Any

from flask import Flask, jsonify, render_template, request
from sqlalchemy import event
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import IntegerConverter

from app import observability
from app.api.base import api
from app.errors import ServiceError, TooManyAttempts
from app.extensions import (
    bootstrap,
    csrf,
    db,
    limiter,
    login_manager,
    migrate,
    retry_after,
    ssh,
)
from app.security import parse_encryption_keys
from config import CONFIGS

__version__ = "0.1.0"
log = logging.getLogger(__name__)


def create_app(config_name: str | None = None, overrides: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    name = config_name or os.environ.get("APP_ENV", "development")
    app.config.from_object(CONFIGS[name])
    app.config.update(overrides or {})
    configure_database_pool(app)
    configure_secrets(app, production=name == "production")
    configure_logging(app)
    observability.init_app(app)
    if app.config["PROXY_FIX_COUNT"]:
        count = app.config["PROXY_FIX_COUNT"]
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=count, x_proto=count, x_host=count, x_port=count
        )
    register_extensions(app)
    register_blueprints(app)
    register_errorhandlers(app)
    register_request_limits(app)
    register_response_headers(app)
    register_commands(app)
    if app.config["DISCOVER_NODES_AT_STARTUP"]:
        discover_nodes_at_startup(app)
    return app


def configure_database_pool(app: Flask) -> None:
    """Room for every deploying thread (each holds one connection at a time) beside
    the web requests; in-memory SQLite keeps its single shared connection."""
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    if url in ("sqlite://", "sqlite:///:memory:"):
        return
    options = dict(app.config["SQLALCHEMY_ENGINE_OPTIONS"])
    options.setdefault("pool_size", 10)
    options.setdefault("max_overflow", app.config["DEPLOY_PARALLELISM"] + 10)
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = options


def configure_secrets(app: Flask, *, production: bool) -> None:
    """Production refuses to start without real secrets; elsewhere an ephemeral key
    keeps the app usable (secrets written with it are unreadable after a restart)."""
    if production and (not app.config["SECRET_KEY"] or not app.config["ENCRYPTION_KEYS"]):
        raise RuntimeError("production needs SECRET_KEY and ENCRYPTION_KEYS in the environment")
    if not app.config["SECRET_KEY"]:
        app.config["SECRET_KEY"] = secrets.token_urlsafe(32)
        log.warning("SECRET_KEY is not set: sessions end when the app restarts")
    if not app.config["ENCRYPTION_KEYS"]:
        from cryptography.fernet import Fernet

        app.config["ENCRYPTION_KEYS"] = Fernet.generate_key().decode()
        log.warning("ENCRYPTION_KEYS is not set: using a key that lives only in this process")
    app.extensions["rpcc_fernet"] = parse_encryption_keys(app.config["ENCRYPTION_KEYS"])


def configure_logging(app: Flask) -> None:
    if app.config.get("LOG_JSON") and not app.testing:
        handler = logging.StreamHandler()
        handler.setFormatter(observability.JsonLogFormatter())
        logging.getLogger().handlers = [handler]
        logging.getLogger().setLevel(logging.INFO)


def _tune_sqlite(engine: Any) -> None:
    """SQLite serves the embedded default with deployments writing from many threads:
    WAL lets readers carry on during a write, and writers wait for each other instead
    of failing at once with "database is locked".  Foreign keys are enforced, as on
    PostgreSQL, so that deleting a row cascades (or is refused) the same way on both."""
    if engine.dialect.name != "sqlite":
        return
    in_memory = engine.url.database in (None, "", ":memory:")

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()


def register_extensions(app: Flask) -> None:
    app.url_map.converters["int"] = _RowId
    db.init_app(app)
    migrate.init_app(
        app, db, directory=os.path.join(os.path.dirname(__file__), "..", "migrations"),
        render_as_batch=True, compare_type=True,
    )
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message_category = "warning"
    csrf.init_app(app)
    limiter.init_app(app)
    bootstrap.init_app(app)
    api.init_app(app)
    with app.app_context():
        _tune_sqlite(db.engine)

    from app.services import audit, nodes, users

    ssh.init_app(app, on_first_contact=nodes.pin_first_key)

    @login_manager.user_loader
    def load_user(session_id: str) -> Any:
        return users.load_session_user(session_id)

    @app.before_request
    def remember_client_ip() -> None:
        audit.client_ip.set(request.remote_addr or "")


def register_blueprints(app: Flask) -> None:
    from app.admin import bp as admin_bp
    from app.api.resources import register as register_api
    from app.auth import bp as auth_bp
    from app.client import bp as client_bp
    from app.main import bp as main_bp

    app.register_blueprint(main_bp)
    app.register_blueprint(auth_bp, url_prefix="/auth")
    app.register_blueprint(admin_bp, url_prefix="/admin")
    app.register_blueprint(client_bp, url_prefix="/client")
    register_api(app)


# Pages load only their own scripts, styles and images; nothing may frame them.
_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)


class _RowId(IntegerConverter):
    """``<int:...>`` in every route: ids beyond the database's 64-bit integers
    answer 404 instead of overflowing the driver."""

    def __init__(self, url_map: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max", 2**63 - 1)
        super().__init__(url_map, *args, **kwargs)


# JSON nested deeper than this is refused before any parser recurses into it.
MAX_JSON_DEPTH = 64


def json_depth(data: bytes) -> int:
    """How deeply brackets nest in a JSON text, skipping strings: one linear pass,
    no recursion, so that hostile nesting costs nothing to measure."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def register_request_limits(app: Flask) -> None:
    """Bounded bodies (MAX_CONTENT_LENGTH answers 413) and bounded JSON nesting."""

    @app.before_request
    def refuse_deep_json() -> Any:
        if request.is_json and request.content_length:
            if json_depth(request.get_data(cache=True)) > MAX_JSON_DEPTH:
                message = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
                if wants_json():
                    return json_error(400, message)
                return render_template("error.html", status=400, message=message), 400
        return None


def register_response_headers(app: Flask) -> None:
    """Security headers on every answer, and no caching of pages: after signing out,
    the back button must not show a page of the signed-in session from the cache."""

    @app.after_request
    def add_headers(response: Any) -> Any:
        headers = response.headers
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", "same-origin")
        headers.setdefault("X-Frame-Options", "DENY")
        if response.mimetype == "text/html":
            headers.setdefault("Content-Security-Policy", _CONTENT_SECURITY_POLICY)
        if request.endpoint != "static" and "Cache-Control" not in headers:
            headers["Cache-Control"] = "no-store"
        return response


def wants_json() -> bool:
    if request.path.startswith("/api/"):
        return True
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes[
        "text/html"]


def _flatten(messages: Any, prefix: str = "", *, top: bool = True) -> dict[str, str]:
    """Turn marshmallow's nested messages into ``{"a.b.0": "message"}``.  Only the top
    level holds webargs' location keys: a field may itself be called ``headers``."""
    out: dict[str, str] = {}
    if isinstance(messages, dict):
        for key, value in messages.items():
            if key in {"json", "query", "form", "headers"} and top:
                out.update(_flatten(value, "", top=False))
                continue
            name = f"{prefix}.{key}" if prefix else str(key)
            out.update(_flatten(value, name, top=False))
    elif isinstance(messages, list) and messages and all(isinstance(m, str) for m in messages):
        out[prefix or "_"] = " ".join(messages)
    elif isinstance(messages, list):
        for i, value in enumerate(messages):
            out.update(_flatten(value, f"{prefix}.{i}" if prefix else str(i), top=False))
    else:
        out[prefix or "_"] = str(messages)
    return out


_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "method_not_allowed", 409: "conflict", 413: "too_large", 422: "invalid",
          429: "rate_limited", 500: "server_error"}


def json_error(status: int, message: str, fields: dict[str, str] | None = None,
               code: str | None = None) -> Any:
    body: dict[str, Any] = {"code": code or _CODES.get(status, "error"), "message": message}
    if fields:
        body["fields"] = fields
    return jsonify({"error": body}), status


def register_errorhandlers(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def service_error(error: ServiceError) -> Any:
        headers = ({"Retry-After": str(error.retry_after)}
                   if isinstance(error, TooManyAttempts) else {})
        if wants_json():
            body, status = json_error(error.status, error.message, error.fields, error.code)
            return body, status, headers
        return render_template("error.html", status=error.status, message=error.message), \
            error.status, headers

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Any:
        status = error.code or 500
        message = error.description or error.name
        if status == 429:
            breached = getattr(error, "limit", None)
            what = breached.error_message if breached and breached.error_message else "attempts"
            most = f" (at most {breached.limit})" if breached else ""
            message = f"Too many {what}{most}. Try again in {retry_after()} seconds."
        data = getattr(error, "data", None) or {}
        fields = _flatten(data.get("messages") or data.get("errors") or {}) or None
        if wants_json():
            if status == 422:
                message = "some fields are invalid"
            response = json_error(status, message, fields)
            for key, value in (data.get("headers") or {}).items():
                response[0].headers[key] = value
            return response
        if status == 400 and "CSRF" in (error.description or ""):
            message = (
                "The form expired or was sent from elsewhere (CSRF check failed). "
                "Reload the page and try again."
            )
        return render_template("error.html", status=status, message=message), status

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Any:
        log.exception("unhandled error")
        if wants_json():
            return json_error(500, "internal server error")
        return render_template("error.html", status=500, message="Internal server error"), 500


def register_commands(app: Flask) -> None:
    from app.cli import register

    register(app)


def discover_nodes_at_startup(app: Flask) -> None:
    """The one piece of work startup may do, and only when asked: an inventory that
    is wrong, missing or meets a database not yet migrated is logged, never fatal.
    Several workers may run this at once; discovery itself never duplicates a node."""
    from app.services import discovery

    path = app.config["NODES_FILE"]
    if not os.path.isfile(path):
        log.warning("DISCOVER_NODES_AT_STARTUP is on but %s does not exist", path)
        return
    with app.app_context():
        try:
            report = discovery.discover_nodes(path)
        except ServiceError as error:
            log.error("node discovery skipped: %s", error.message)
            return
        except Exception:
            log.exception("node discovery from %s failed", path)
            return
    discovery.log_report(report, path)
