"""Node metrics in the admin panel: the fleet overview (every node's latest figures
in one table) and the charts on a node's page, drawn on the server
(:mod:`app.web.charts`)."""

from __future__ import annotations

from typing import Any

from flask import render_template, request
from markupsafe import Markup

from app.admin import bp
from app.engines import get_engine
from app.models import Node, User
from app.services import monitoring, nodes, rendering
from app.web import current_actor
from app.web.charts import format_bytes_per_second, format_duration, line_chart

#: The charts of a node's page: figure, label, unit, top of the scale (None: the
#: largest value), how values are written.
CHARTS: tuple[tuple[str, str, str, float | None, Any], ...] = (
    ("cpu_percent", "CPU", "%", 100.0, None),
    ("mem_percent", "Memory", "%", 100.0, None),
    ("swap_percent", "Swap", "%", 100.0, None),
    ("disk_percent", "Fullest file system", "%", 100.0, None),
    ("load1", "Load (1 minute)", "", None, None),
    ("net_rx_bps", "Network received", "B/s", None, format_bytes_per_second),
    ("net_tx_bps", "Network sent", "B/s", None, format_bytes_per_second),
)
FLEET_PAGE_SIZE = 200


def _page_number() -> int:
    return request.args.get("page", 1, type=int) or 1


@bp.get("/fleet", endpoint="fleet")
def fleet() -> Any:
    page = monitoring.fleet_overview(current_actor(), page=_page_number(),
                                     per_page=FLEET_PAGE_SIZE)
    return render_template("admin/fleet_overview.html", page=page,
                           format_bytes_per_second=format_bytes_per_second,
                           format_duration=format_duration)


def node_metrics_context(actor: User, node_id: int) -> dict[str, Any]:
    """What a node's page shows of its metrics, over the range the query string
    asks for (``?range=1h|24h|30d``), and where its proxy's counters are read."""
    history = monitoring.node_history(actor, node_id, request.args.get("range"))
    charts: list[Markup] = []
    for figure, label, unit, top, fmt in CHARTS:
        options = {"fmt": fmt} if fmt else {}
        charts.append(line_chart(history.series(figure), label=label, unit=unit, y_max=top,
                                 start=history.start, end=history.end, gap=history.gap,
                                 **options))
    return {"metrics": history, "metric_charts": charts, "metric_ranges": monitoring.RANGES,
            "format_duration": format_duration,
            **_counters_context(nodes.get_node(actor, node_id))}


def _counters_context(node: Node) -> dict[str, Any]:
    """Where the node's proxy tells its counters (None: its engine's are not read),
    or why its fields name no such place."""
    engine = get_engine(node.proxy_type.value)
    try:
        endpoint = engine.status_endpoint(rendering.node_spec(node))
    except ValueError as exc:
        return {"status_endpoint": None, "status_endpoint_problem": str(exc),
                "default_status_port": engine.defaults.status_port}
    return {"status_endpoint": endpoint, "status_endpoint_problem": "",
            "default_status_port": engine.defaults.status_port}
