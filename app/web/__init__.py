"""View code the panels share: generic create, edit and delete pages
(:mod:`.object_views`) and a site's pages (:mod:`.site_pages`), which each panel's
blueprint registers under its own URL prefix and endpoint names."""

from __future__ import annotations

from flask_login import current_user

from app.models import User


def current_actor() -> User:
    """The signed-in user, as services take it (the object, not Flask-Login's proxy)."""
    actor: User = current_user._get_current_object()
    return actor
