"""Client panel: a signed-in user's own sites, API tokens and profile (with their
notification channels)."""

from typing import Any

from flask import Blueprint, current_app
from flask_login import current_user

bp = Blueprint("client", __name__)


@bp.before_request
def require_login() -> Any:
    """One guard for the whole panel; the services scope every object to the actor."""
    if not current_user.is_authenticated:
        return current_app.login_manager.unauthorized()  # type: ignore[attr-defined]
    return None


from app.client import (  # noqa: E402,F401
    alert_views,
    notification_views,
    two_factor_views,
    views,
)
