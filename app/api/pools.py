"""``/api/v1/pools``: every account reads them (clients choose one per site);
administrators manage them."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields

from app.api.auth import ApiBlueprint, admin_only, current_actor
from app.api.schemas import ErrorSchema, PageQuerySchema, page_schema
from app.models import Pool
from app.services import nodes

blp = ApiBlueprint(
    "pools", __name__, url_prefix="/api/v1/pools",
    description="Sets of nodes that serve the same sites.",
)


class PoolSchema(Schema):
    id = fields.Integer(dump_only=True)
    name = fields.String(required=True)
    description = fields.String(metadata={"description": "default empty"})


@blp.route("")
class Pools(MethodView):
    @blp.arguments(PageQuerySchema, location="query")
    @blp.response(200, page_schema(PoolSchema))
    def get(self, query: dict[str, Any]) -> Any:
        """List pools (any account)."""
        return nodes.list_pools_page(current_actor(), **query)

    @admin_only
    @blp.arguments(PoolSchema)
    @blp.response(201, PoolSchema)
    def post(self, data: dict[str, Any]) -> Pool:
        """Create a pool (administrators)."""
        return nodes.create_pool(current_actor(), **data)


@blp.route("/<int:pool_id>")
class PoolItem(MethodView):
    @admin_only
    @blp.arguments(PoolSchema)
    @blp.response(200, PoolSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def put(self, data: dict[str, Any], pool_id: int) -> Pool:
        """Rename a pool or change its description (administrators)."""
        return nodes.update_pool(current_actor(), pool_id, **data)

    @admin_only
    @blp.response(204)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(409, schema=ErrorSchema, description="the pool still has nodes or sites")
    def delete(self, pool_id: int) -> None:
        """Delete an empty pool (administrators)."""
        nodes.delete_pool(current_actor(), pool_id)
