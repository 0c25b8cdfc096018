"""Deployments: start one (202, it runs in the background), follow it, and each
node's version history, diff, rollback and drift check (administrators)."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields

from app.api.auth import ApiBlueprint, admin_only, current_actor
from app.api.schemas import (
    PageQuerySchema,
    QueryInteger,
    RowId,
    UtcDateTime,
    WithValues,
    page_schema,
)
from app.extensions import limit_deploy_requests
from app.models import ConfigVersion, DeploymentStatus, Node, Rollout
from app.services import deployments
from app.services.common import Page
from app.web.filters import RolloutFilters

blp = ApiBlueprint(
    "deployments", __name__, url_prefix="/api/v1",
    description="Deploying sites to their pool's nodes; versions and rollback per node.",
)

STATUSES = [s.value for s in DeploymentStatus]


class StepSchema(Schema):
    step = fields.String()
    seconds = fields.Float()
    ok = fields.Boolean()
    # The upload's details, for administrators (a count of files would tell a client
    # how big the pool it shares is).
    mode = fields.String(metadata={"description": "upload: incremental (only the changed "
                                                  "files were sent), full or adopt"})
    files = fields.Integer(metadata={"description": "upload: files sent"})
    removed = fields.Integer(metadata={"description": "upload: files removed"})
    bytes = fields.Integer(metadata={"description": "upload: size of what was sent"})


class NodeDeploymentSchema(Schema):
    node = fields.String(metadata={"description": "node name (for clients: node 1, node 2...)"})
    node_id = fields.Integer(allow_none=True)
    status = fields.String(metadata={"enum": STATUSES})
    step = fields.String(metadata={"description": "the step running now"})
    error = fields.String(metadata={"description": "what the node reported (for clients: "
                                                   "the same as message)"})
    message = fields.String(metadata={"description": "what happened and what to do"})
    steps = fields.List(fields.Nested(StepSchema),
                        metadata={"description": "seconds each finished step took"})
    version = fields.Integer(allow_none=True, metadata={"description": "config version"})


class DeploymentSchema(Schema):
    id = fields.Integer()
    kind = fields.String(metadata={"enum": ["deploy", "rollback"]})
    site_id = fields.Integer(allow_none=True)
    status = fields.String(metadata={"enum": STATUSES})
    error = fields.String()
    message = fields.String(metadata={"description": "what happened and what to do"})
    deployed = fields.Integer(metadata={"description": "nodes the change went live on"})
    created_at = UtcDateTime()
    started_at = UtcDateTime(allow_none=True)
    finished_at = UtcDateTime(allow_none=True)
    nodes = fields.List(fields.Nested(NodeDeploymentSchema))


DeploymentPageSchema = page_schema(DeploymentSchema)


class StartedSchema(Schema):
    id = fields.Integer()
    status = fields.String(attribute="status.value", metadata={"enum": STATUSES})


class DeployRequestSchema(Schema):
    canary_node = fields.String(metadata={
        "description": "name of a node of the pool to deploy first; the rollout stops "
                       "there if it fails"})


def _page(result: Page[Rollout]) -> Page[dict[str, Any]]:
    actor = current_actor()
    return Page(items=[deployments.rollout_to_dict(r, actor) for r in result.items],
                page=result.page, per_page=result.per_page, total=result.total)


@blp.route("/sites/<int:site_id>/deploy")
class SiteDeploy(MethodView):
    @limit_deploy_requests
    @blp.arguments(DeployRequestSchema, required=False)
    @blp.response(202, StartedSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(409, response="CONFLICT")
    @blp.alt_response(429, response="TOO_MANY_REQUESTS")
    def post(self, data: dict[str, Any] | None, site_id: int) -> Any:
        """Deploy the site to every active node of its pool (in the background)."""
        return deployments.deploy_site(current_actor(), site_id,
                                       canary_node=(data or {}).get("canary_node"))


@blp.route("/sites/<int:site_id>/deployments")
class SiteDeployments(MethodView):
    @blp.arguments(PageQuerySchema, location="query")
    @blp.response(200, DeploymentPageSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, query: dict[str, Any], site_id: int) -> Any:
        """The site's deployments, newest first."""
        return _page(deployments.list_rollouts(current_actor(), site_id=site_id, **query))


class DeploymentQuerySchema(RolloutFilters, PageQuerySchema):
    pass


@blp.route("/deployments")
class Deployments(MethodView):
    @blp.arguments(DeploymentQuerySchema, location="query")
    @blp.response(200, DeploymentPageSchema)
    def get(self, query: dict[str, Any]) -> Any:
        """Deployments you may see (your sites'; every one for administrators)."""
        return _page(deployments.list_rollouts(current_actor(), **query))


@blp.route("/deployments/<int:rollout_id>")
class DeploymentItem(MethodView):
    @blp.response(200, DeploymentSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, rollout_id: int) -> Any:
        """A deployment's status and each node's progress."""
        actor = current_actor()
        return deployments.rollout_to_dict(deployments.get_rollout(actor, rollout_id), actor)


class VersionSchema(Schema):
    id = fields.Integer()
    version = fields.Integer()
    sha256 = fields.String()
    file_count = fields.Integer()
    site_versions = fields.Dict(keys=fields.String(), values=fields.Integer(),
                                metadata={"description": "site id -> site config version"})
    created_at = UtcDateTime()
    status = fields.String(allow_none=True, metadata={
        "description": "outcome of the deployment that carried it", "enum": STATUSES})


class VersionFilesSchema(VersionSchema):
    files = fields.Dict(keys=fields.String(), values=fields.String(),
                        metadata={"description": "private keys withheld"})


class DiffQuerySchema(Schema):
    from_version = QueryInteger(required=True, data_key="from",
                                metadata={"description": "version id"})
    to_version = QueryInteger(required=True, data_key="to", metadata={"description": "version id"})


class DiffSchema(Schema):
    diff = fields.String(metadata={"description": "unified diff, private keys withheld"})


class RollbackSchema(Schema):
    version = RowId(required=True, metadata={"description": "id of the version to restore"})


def _version(version: ConfigVersion, statuses: dict[int, str], **values: Any) -> WithValues:
    """The version with the outcome of the deployment that carried it."""
    return WithValues(version, status=statuses.get(version.id), **values)


@blp.route("/nodes/<int:node_id>/deploy")
class NodeDeploy(MethodView):
    @admin_only
    @limit_deploy_requests
    @blp.response(202, StartedSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(429, response="TOO_MANY_REQUESTS")
    def post(self, node_id: int) -> Any:
        """Deploy the current state of the node's pool to this node."""
        return deployments.deploy_nodes(current_actor(), [node_id])


@blp.route("/nodes/<int:node_id>/versions")
class NodeVersions(MethodView):
    @admin_only
    @blp.arguments(PageQuerySchema, location="query")
    @blp.response(200, page_schema(VersionSchema))
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, query: dict[str, Any], node_id: int) -> Any:
        """The node's config versions, newest first."""
        page = deployments.list_versions(current_actor(), node_id, **query)
        statuses = deployments.version_statuses([v.id for v in page.items])
        return Page(items=[_version(v, statuses) for v in page.items], page=page.page,
                    per_page=page.per_page, total=page.total)


@blp.route("/nodes/<int:node_id>/versions/<int:version_id>")
class NodeVersionItem(MethodView):
    @admin_only
    @blp.response(200, VersionFilesSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, node_id: int, version_id: int) -> Any:
        """One version with its files."""
        version = deployments.get_version(current_actor(), node_id, version_id)
        return _version(version, deployments.version_statuses([version.id]),
                        files=deployments.version_files(version))


@blp.route("/nodes/<int:node_id>/diff")
class NodeDiff(MethodView):
    @admin_only
    @blp.arguments(DiffQuerySchema, location="query")
    @blp.response(200, DiffSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, query: dict[str, Any], node_id: int) -> Any:
        """What changed between two versions of the node."""
        return {"diff": deployments.diff_versions(current_actor(), node_id,
                                                  query["from_version"], query["to_version"])}


@blp.route("/nodes/<int:node_id>/rollback")
class NodeRollback(MethodView):
    @admin_only
    @limit_deploy_requests
    @blp.arguments(RollbackSchema)
    @blp.response(202, StartedSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(429, response="TOO_MANY_REQUESTS")
    def post(self, data: dict[str, Any], node_id: int) -> Any:
        """Deploy an earlier version of the node again, exactly as it was."""
        return deployments.rollback_node(current_actor(), node_id, data["version"])


class DriftSchema(Schema):
    drifted = fields.Boolean()
    drift_details = fields.String()
    drift_checked_at = UtcDateTime(allow_none=True)


@blp.route("/nodes/<int:node_id>/drift")
class NodeDrift(MethodView):
    @admin_only
    @blp.response(200, DriftSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def post(self, node_id: int) -> Node:
        """Compare the node's files with its last deployed version now."""
        return deployments.check_drift(current_actor(), node_id)
