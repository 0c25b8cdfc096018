from flask import render_template_string
from flask_login import login_required

from app.admin import bp


@bp.before_request
@login_required
def _guard() -> None:
    return None


for _name in ("dashboard", "sites", "nodes", "pools", "users", "audit"):
    bp.add_url_rule(f"/{_name}" if _name != "dashboard" else "/", _name,
                    lambda: render_template_string("admin"))
