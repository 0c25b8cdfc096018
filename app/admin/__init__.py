"""Admin panel (placeholder views, replaced as the panel is built)."""

from flask import Blueprint

bp = Blueprint("admin", __name__)

from app.admin import views  # noqa: E402,F401
