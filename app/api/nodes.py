"""``/api/v1/nodes`` (administrators): the proxy servers of the fleet.

SSH secrets are write-only: answers say whether one is set, never what it is.
"""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields
from marshmallow.validate import Range

from app.api.auth import ApiBlueprint, admin_only, current_actor
from app.api.schemas import ErrorSchema, PageQuerySchema, StrictBoolean, UtcDateTime, page_schema
from app.models import Node, NodeStatus, ProxyType
from app.services import node_actions, node_commands, nodes
from app.web.filters import NodeFilters

blp = ApiBlueprint(
    "nodes", __name__, url_prefix="/api/v1/nodes",
    description="Proxy nodes reached over SSH (administrators only).",
)


def _command(purpose: str) -> str:
    forms = "; ".join(f"{engine}: {' | '.join(patterns)}"
                      for engine, patterns in node_commands.known_forms(purpose).items())
    return (f"a form the engine knows ({forms}; PATH is an absolute path, ADDRESS "
            "host:port), after 'sudo -n' too for an SSH user other than root; anything "
            "else is 422 naming the field unless ALLOW_CUSTOM_NODE_COMMANDS is on. Run as "
            "an argument list, never through a shell. Default depends on proxy_type.")


class NodeUpdateSchema(Schema):
    """PUT and PATCH alike: keys left out keep their value (an empty secret too)."""

    name = fields.String()
    host = fields.String()
    ssh_port = fields.Integer(strict=True, metadata={"description": "default 22"})
    ssh_user = fields.String(metadata={"description": "default root"})
    ssh_private_key = fields.String(
        load_only=True, metadata={"description": "write-only; unencrypted PEM or OpenSSH key"})
    ssh_password = fields.String(load_only=True, metadata={"description": "write-only"})
    proxy_type = fields.String(metadata={"enum": [t.value for t in ProxyType]})
    pool = fields.String(metadata={"description": "pool name, default 'default'"})
    config_dir = fields.String(metadata={"description": "default depends on proxy_type"})
    test_command = fields.String(metadata={"description": _command("test")})
    reload_command = fields.String(metadata={"description": _command("reload")})
    listen_address = fields.String(
        allow_none=True, metadata={"description": "IP that rendered sites bind on this node"})
    http_port = fields.Integer(strict=True, metadata={"description": "default 80"})
    https_port = fields.Integer(strict=True, metadata={"description": "default 443"})
    glances_url = fields.String(allow_none=True)
    enabled = StrictBoolean()
    log_dir = fields.String(metadata={"description": "per-site logs, default /var/log/rpcc"})
    cache_dir = fields.String(metadata={"description": "proxy cache, default /var/cache/rpcc"})
    geoip_db_path = fields.String(
        metadata={"description": "GeoIP2 country database on the node"})
    main_config = fields.String(metadata={
        "description": "file that 'prepare' makes load config_dir; default per engine"})
    status_port = fields.Integer(
        strict=True, allow_none=True, validate=Range(min=1, max=65535), metadata={
            "description": "port on the node's loopback where the proxy's connections and "
                           "requests are read: nginx's status listener, which deployments "
                           "open there (default 8899), or Caddy's admin endpoint when the "
                           "reload command names no --address (default 2019); null: the "
                           "engine's default; not ssh_port, http_port or https_port"})


class NodeCreateSchema(NodeUpdateSchema):
    """``ssh_private_key`` or ``ssh_password`` is required as well."""

    name = fields.String(required=True)
    host = fields.String(required=True)


class NodeSchema(NodeUpdateSchema):
    class Meta:
        exclude = ("ssh_private_key", "ssh_password")

    id = fields.Integer(dump_only=True)
    has_ssh_private_key = fields.Function(lambda node: node.ssh_private_key is not None,
                                          dump_only=True, metadata={"type": "boolean"})
    has_ssh_password = fields.Function(lambda node: node.ssh_password is not None,
                                       dump_only=True, metadata={"type": "boolean"})
    pool = fields.String(attribute="pool.name", dump_only=True)
    status = fields.String(dump_only=True, metadata={"enum": [s.value for s in NodeStatus]})
    host_key = fields.String(dump_only=True, allow_none=True,
                             metadata={"description": "SSH host key pinned on first contact"})
    host_key_fingerprint = fields.Function(
        lambda node: node_actions.fingerprint_or_none(node.host_key), dump_only=True,
        allow_none=True, metadata={"type": "string", "description": "null before first contact"})
    pending_host_key_fingerprint = fields.Function(
        lambda node: node_actions.fingerprint_or_none(node.pending_host_key),
        dump_only=True, allow_none=True,
        metadata={"type": "string", "description": "a changed key the node presented: "
                  "deployments are refused until it is accepted; null when none"})
    is_discovered = fields.Boolean(dump_only=True)
    last_seen = UtcDateTime(allow_none=True)
    last_check = fields.Dict(dump_only=True, allow_none=True, metadata={
        "description": "last check: ssh, service and http, each {ok, detail}"})
    last_check_at = UtcDateTime(allow_none=True)
    drifted = fields.Boolean(dump_only=True, metadata={
        "description": "files on the node differ from its last deployed version"})
    drift_details = fields.String(dump_only=True)
    drift_checked_at = UtcDateTime(allow_none=True)


class NodeQuerySchema(NodeFilters, PageQuerySchema):
    pass


@blp.route("")
class Nodes(MethodView):
    @admin_only
    @blp.arguments(NodeQuerySchema, location="query")
    @blp.response(200, page_schema(NodeSchema))
    def get(self, query: dict[str, Any]) -> Any:
        """List nodes."""
        return nodes.list_nodes(current_actor(), **query)

    @admin_only
    @blp.arguments(NodeCreateSchema)
    @blp.response(201, NodeSchema)
    def post(self, data: dict[str, Any]) -> Node:
        """Register a node."""
        return nodes.create_node(current_actor(), data)


@blp.route("/<int:node_id>")
class NodeItem(MethodView):
    @admin_only
    @blp.response(200, NodeSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, node_id: int) -> Node:
        """Read a node."""
        return nodes.get_node(current_actor(), node_id)

    @admin_only
    @blp.arguments(NodeUpdateSchema)
    @blp.response(200, NodeSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def put(self, data: dict[str, Any], node_id: int) -> Node:
        """Update a node; keys left out keep their value."""
        return nodes.update_node(current_actor(), node_id, data)

    @admin_only
    @blp.arguments(NodeUpdateSchema)
    @blp.response(200, NodeSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def patch(self, data: dict[str, Any], node_id: int) -> Node:
        """Update some fields of a node."""
        return nodes.update_node(current_actor(), node_id, data)

    @admin_only
    @blp.response(204)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(409, schema=ErrorSchema, description="the node still serves active sites")
    def delete(self, node_id: int) -> None:
        """Delete a node that no longer serves active sites (disable or drain it first)."""
        nodes.delete_node(current_actor(), node_id)


@blp.route("/<int:node_id>/check")
class NodeCheck(MethodView):
    @admin_only
    @blp.response(200, NodeSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def post(self, node_id: int) -> Node:
        """Check SSH, the proxy process and HTTP now; the result is in ``last_check``."""
        return node_actions.check_node(current_actor(), node_id)


class PrepareSchema(Schema):
    steps = fields.List(fields.String(), metadata={"description": "what was done"})


@blp.route("/<int:node_id>/prepare")
class NodePrepare(MethodView):
    @admin_only
    @blp.response(200, PrepareSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(422, response="UNPROCESSABLE_ENTITY")
    def post(self, node_id: int) -> Any:
        """Install the proxy if missing, create the managed directories and the include
        line; safe to repeat."""
        return {"steps": node_actions.prepare_node(current_actor(), node_id)}


@blp.route("/<int:node_id>/host-key")
class NodeHostKey(MethodView):
    @admin_only
    @blp.response(200, NodeSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(422, response="UNPROCESSABLE_ENTITY")
    def post(self, node_id: int) -> Node:
        """Accept the changed host key the node now presents."""
        return node_actions.accept_host_key(current_actor(), node_id)
