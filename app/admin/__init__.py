"""Admin panel: users, nodes, pools, every site and the audit log."""

from typing import Any

from flask import Blueprint, abort, current_app
from flask_login import current_user

bp = Blueprint("admin", __name__)


@bp.before_request
def require_admin() -> Any:
    """One guard for every admin route, so a new route cannot forget it; the services
    check the role again."""
    if not current_user.is_authenticated:
        return current_app.login_manager.unauthorized()  # type: ignore[attr-defined]
    if not current_user.is_admin:
        abort(403)
    return None


from app.admin import alert_views, backup_views, monitoring_views, views  # noqa: E402,F401
