"""A client's alert pages: the alerts about their own sites, each with its history,
and acknowledging them (the pages both panels share, :mod:`app.web.alert_pages`)."""

from __future__ import annotations

from app.client import bp
from app.web import alert_pages

alert_pages.register(bp)
