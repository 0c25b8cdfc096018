"""Reading the app's pages in tests that drive it through Flask's test client."""

from __future__ import annotations

import html
from typing import Any


def page_text(response: Any) -> str:
    """The page as a person reads it: entities such as ``&#39;`` turned back."""
    return html.unescape(response.get_data(as_text=True))


def committed(db: Any) -> Any:
    """Requests share the test's session: drop what they left uncommitted."""
    db.session.rollback()
    db.session.expire_all()
    return db.session
