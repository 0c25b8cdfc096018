"""Extensions are created unbound here and bound in ``create_app``."""

import threading
import time
from typing import Any

from flask import Flask, current_app, g
from flask_bootstrap import Bootstrap5
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager, current_user
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import MetaData

from app.connector import SSHConnectionPool
from app.connector.hostkeys import FirstContactCallback

# Deterministic constraint names keep Alembic migrations identical across databases.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

db = SQLAlchemy(metadata=MetaData(naming_convention=NAMING_CONVENTION))
migrate = Migrate()
login_manager = LoginManager()
csrf = CSRFProtect()
limiter = Limiter(key_func=get_remote_address)
bootstrap = Bootstrap5()


class SSHConnections:
    """The app's SSH connection pool: connections to the nodes are kept between
    deployments, health checks and certificate work, one pool per app process.

    The pool opens nothing until it is used (startup does no work); ``reset`` closes
    every connection, and the next use starts a fresh pool.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def init_app(self, app: Flask, on_first_contact: FirstContactCallback) -> None:
        """:param on_first_contact: stores a node's key the first time it is seen."""
        app.extensions["rpcc_ssh"] = {"on_first_contact": on_first_contact, "pool": None}

    def pool(self, app: Flask | None = None) -> SSHConnectionPool:
        app = app or current_app._get_current_object()  # type: ignore[attr-defined]
        state = app.extensions["rpcc_ssh"]
        with self._lock:
            if state["pool"] is None:
                cfg = app.config
                state["pool"] = SSHConnectionPool(connect_timeout=cfg["SSH_CONNECT_TIMEOUT"],
                                        operation_timeout=cfg["SSH_OPERATION_TIMEOUT"],
                                        idle_timeout=cfg["SSH_IDLE_TIMEOUT"],
                                        retries=cfg["SSH_RETRIES"],
                                        on_first_contact=state["on_first_contact"])
            pool: SSHConnectionPool = state["pool"]
            return pool

    def reset(self, app: Flask | None = None) -> None:
        """Close every connection of the app's pool."""
        app = app or current_app._get_current_object()  # type: ignore[attr-defined]
        with self._lock:
            pool, app.extensions["rpcc_ssh"]["pool"] = app.extensions["rpcc_ssh"]["pool"], None
        if pool is not None:
            pool.close()


ssh = SSHConnections()


# Requests that start background work (a rollout, a certificate order) count per user
# whatever the door (the panels or the API, any address): one tenant's script cannot
# fill the deploying threads or spend the CA's rate limit that every tenant shares.
# Every such request counts, refused ones too, so probing costs the same.
# Administrators get limits of their own (higher by default): they deploy nodes and
# roll back during incidents, yet a runaway script with their token is still bounded.
DEPLOY_REQUEST_SCOPE = "deploy-request"
CERTIFICATE_REQUEST_SCOPE = "certificate-request"
NOTIFICATION_TEST_SCOPE = "notification-test"


def _requester() -> Any:
    """The API token's user, else the signed-in user (the API never reads cookies)."""
    actor = g.get("api_actor")
    if actor is None and current_user.is_authenticated:
        actor = current_user
    return actor


def requesting_user() -> str:
    actor = _requester()
    return f"user:{actor.id}" if actor is not None else "address:" + get_remote_address()


def _per_role(setting: str) -> str:
    actor = _requester()
    prefix = "ADMIN_" if actor is not None and getattr(actor, "is_admin", False) else ""
    return str(current_app.config[prefix + setting])


def deploy_request_limit() -> str:
    return _per_role("DEPLOY_REQUEST_LIMIT")


def certificate_request_limit() -> str:
    return _per_role("CERTIFICATE_REQUEST_LIMIT")


limit_deploy_requests = limiter.shared_limit(
    deploy_request_limit, scope=DEPLOY_REQUEST_SCOPE, key_func=requesting_user,
    error_message="deployment requests")
limit_certificate_requests = limiter.shared_limit(
    certificate_request_limit, scope=CERTIFICATE_REQUEST_SCOPE, key_func=requesting_user,
    error_message="certificate requests")
# Each test message reaches a chat service or a tenant's server: counted per user.
limit_notification_tests = limiter.shared_limit(
    lambda: str(current_app.config["NOTIFICATION_TEST_LIMIT"]), scope=NOTIFICATION_TEST_SCOPE,
    key_func=requesting_user, error_message="test messages")


def retry_after() -> int:
    """Seconds until the limit this request broke lets the next one through (what
    Flask-Limiter puts in ``Retry-After``), for the message people read."""
    breached = limiter.current_limit
    if breached is None:
        return 60
    return max(1, int(breached.reset_at - time.time()))
