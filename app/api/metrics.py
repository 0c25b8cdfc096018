"""Node metrics (administrators): a node's figures over a range and the fleet's
latest ones.  ``None`` in a figure means Glances did not report it, never zero."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields
from marshmallow.validate import OneOf

from app.api.auth import ApiBlueprint, admin_only, current_actor
from app.api.schemas import PageQuerySchema, UtcDateTime, page_schema
from app.models import NodeStatus
from app.services import monitoring
from app.services.common import Page

blp = ApiBlueprint(
    "metrics", __name__, url_prefix="/api/v1",
    description="Node metrics read from Glances (administrators only).",
)


class FigureFields(Schema):
    """What one sample or average says; each figure is null when not reported."""

    cpu_percent = fields.Float(allow_none=True, dump_only=True)
    mem_percent = fields.Float(allow_none=True, dump_only=True)
    swap_percent = fields.Float(allow_none=True, dump_only=True,
                                metadata={"description": "null when the node has no swap"})
    load1 = fields.Float(allow_none=True, dump_only=True)
    load5 = fields.Float(allow_none=True, dump_only=True)
    load15 = fields.Float(allow_none=True, dump_only=True)
    disk_percent = fields.Float(allow_none=True, dump_only=True,
                                metadata={"description": "the fullest file system's use"})
    net_rx_bps = fields.Float(allow_none=True, dump_only=True,
                              metadata={"description": "bytes received per second, all "
                                        "interfaces but loopback"})
    net_tx_bps = fields.Float(allow_none=True, dump_only=True,
                              metadata={"description": "bytes sent per second"})
    connections = fields.Float(allow_none=True, dump_only=True,
                               metadata={"description": "the proxy's open connections"})
    requests_per_second = fields.Float(allow_none=True, dump_only=True)


class NodeMetricPointSchema(FigureFields):
    at = UtcDateTime(metadata={"description": "the sample's time, or its bucket's start"})
    samples = fields.Integer(dump_only=True,
                             metadata={"description": "raw samples averaged in this point"})


class NodeFileSystemSchema(Schema):
    mount = fields.String(dump_only=True)
    percent = fields.Float(allow_none=True, dump_only=True)
    used = fields.Integer(allow_none=True, dump_only=True, metadata={"description": "bytes"})
    size = fields.Integer(allow_none=True, dump_only=True, metadata={"description": "bytes"})


class NodeMetricLatestSchema(FigureFields):
    at = UtcDateTime()
    uptime_seconds = fields.Integer(allow_none=True, dump_only=True)
    filesystems = fields.List(fields.Nested(NodeFileSystemSchema), allow_none=True, dump_only=True)


class MetricsNodeSchema(Schema):
    id = fields.Integer(dump_only=True)
    name = fields.String(dump_only=True)
    pool = fields.String(attribute="pool.name", dump_only=True)
    status = fields.String(dump_only=True, metadata={"enum": [s.value for s in NodeStatus]})
    enabled = fields.Boolean(dump_only=True)


class MetricsStateFields(Schema):
    glances_api = fields.String(
        attribute="node.glances_api", allow_none=True, dump_only=True,
        metadata={"description": "the Glances REST API version the node speaks (3 or 4); "
                  "null when no Glances answered"})
    metrics_error = fields.String(
        attribute="node.metrics_error", dump_only=True,
        metadata={"description": "why the last read gave no metrics, in words; empty "
                  "when it did"})
    metrics_at = UtcDateTime(attribute="node.metrics_at", allow_none=True,
                             metadata={"description": "the last sample's time"})


class NodeMetricsSchema(MetricsStateFields):
    node = fields.Nested(MetricsNodeSchema, dump_only=True)
    range = fields.String(dump_only=True, metadata={"enum": list(monitoring.RANGES)})
    resolution = fields.Integer(dump_only=True, metadata={
        "description": "seconds each point covers: 0 for raw samples (1h), 300 (24h), "
                       "3600 (30d)"})
    start = UtcDateTime()
    end = UtcDateTime()
    points = fields.List(fields.Nested(NodeMetricPointSchema), dump_only=True)
    latest = fields.Nested(NodeMetricLatestSchema, allow_none=True, dump_only=True,
                           metadata={"description": "the last raw sample: file systems, "
                                     "uptime; null without metrics"})


class FleetMetricsSchema(MetricsStateFields):
    node = fields.Nested(MetricsNodeSchema, dump_only=True)
    latest = fields.Nested(NodeMetricLatestSchema, allow_none=True, dump_only=True,
                           metadata={"description": "null when the node never gave metrics"})


class RangeQuerySchema(Schema):
    range = fields.String(load_default=monitoring.DEFAULT_RANGE,
                          validate=OneOf(list(monitoring.RANGES)),
                          metadata={"description": "how far back: 1h (raw samples), 24h "
                                    "(5-minute averages) or 30d (hourly averages)"})


@blp.route("/nodes/<int:node_id>/metrics")
class NodeMetrics(MethodView):
    @admin_only
    @blp.arguments(RangeQuerySchema, location="query")
    @blp.response(200, NodeMetricsSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, query: dict[str, Any], node_id: int) -> monitoring.NodeHistory:
        """A node's metrics over a range."""
        return monitoring.node_history(current_actor(), node_id, query["range"])


@blp.route("/metrics/fleet")
class FleetMetrics(MethodView):
    @admin_only
    @blp.arguments(PageQuerySchema, location="query")
    @blp.response(200, page_schema(FleetMetricsSchema))
    def get(self, query: dict[str, Any]) -> Page[monitoring.FleetRow]:
        """Every node's latest metrics, by name."""
        return monitoring.fleet_overview(current_actor(), **query)
