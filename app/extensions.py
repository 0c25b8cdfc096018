"""Extensions are created unbound here and bound in ``create_app``."""

from flask import current_app, request
from flask_bootstrap import Bootstrap5
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import MetaData

from app.api.base import ControlPlaneApi

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
api = ControlPlaneApi()


# Sign-in attempts through the form and through the token API count against one
# limit, per client address and per username: the two doors share one lock.
SIGN_IN_SCOPE = "sign-in"
SIGN_IN_USER_SCOPE = "sign-in-user"


def sign_in_limit() -> str:
    return str(current_app.config["LOGIN_RATE_LIMIT"])


def sign_in_username() -> str:
    """The username a sign-in attempt names, from the form or the JSON body, so that
    spreading a guessing attack over addresses or doors does not help."""
    body = request.get_json(silent=True) if request.is_json else None
    if isinstance(body, dict):
        username = body.get("username")
    else:
        username = request.form.get("username")
    return "sign-in-user:" + (username if isinstance(username, str) else "").strip().lower()[:64]
