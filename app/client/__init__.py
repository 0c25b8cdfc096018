"""Client panel."""

from flask import Blueprint

bp = Blueprint("client", __name__)

from app.client import views  # noqa: E402,F401
