"""The uptime panel of a site's page, shared by the admin and client panels: the
site's uptime, its last check through each node, and its charts over the range the
page asks for (``?uptime=24h``, ``7d`` or ``30d``)."""

from __future__ import annotations

from typing import Any

from flask import request

from app.errors import ValidationError
from app.models import Site, User
from app.services import uptime
from app.web.charts import line_chart

RANGE_LABELS = {"24h": "24 hours", "7d": "7 days", "30d": "30 days"}


def context(actor: User, site: Site) -> dict[str, Any]:
    """What ``shared/_site_uptime.html`` needs.  A range the page does not know shows
    the last 24 hours with a word saying so, rather than an error page."""
    asked = request.args.get("uptime")
    try:
        chosen, refused = uptime.check_range(asked), ""
    except ValidationError as exc:
        chosen, refused = "24h", exc.fields["range"]
    data = uptime.site_uptime(actor, site.id, chosen)
    history = data["history"]
    points = history["points"]
    start = points[0]["at"] if points else None
    return {
        "uptime": data,
        "uptime_range": chosen,
        "uptime_range_refused": refused,
        "uptime_ranges": RANGE_LABELS,
        "uptime_charts": [
            line_chart([(p["at"], p["uptime_percent"]) for p in points],
                       label=f"Uptime over {RANGE_LABELS[chosen]}", unit="%", y_max=100,
                       start=start),
            line_chart([(p["at"], p["response_ms"]) for p in points],
                       label=f"Response time over {RANGE_LABELS[chosen]}", unit="ms",
                       start=start),
        ],
    }
