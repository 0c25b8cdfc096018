"""What the control plane observes of its nodes: their figures from Glances and their
proxies' counters, kept at three resolutions, and the fleet's latest state.  Other
services and the views use this door; the modules behind it are its own."""

from app.services.monitoring.node_metrics import (
    DEFAULT_RANGE,
    RANGES,
    FleetRow,
    NodeHistory,
    Point,
    fleet_overview,
    latest_sample,
    node_history,
    poll_node_metrics,
)
from app.services.monitoring.proxy_status import (
    ProxyStatus,
    ProxyStatusUnavailable,
    read_proxy_status,
    requests_per_second,
)
from app.services.monitoring.retention import apply_retention

__all__ = ["DEFAULT_RANGE", "RANGES", "FleetRow", "NodeHistory", "Point", "ProxyStatus",
           "ProxyStatusUnavailable", "apply_retention", "fleet_overview", "latest_sample",
           "node_history", "poll_node_metrics", "read_proxy_status", "requests_per_second"]
