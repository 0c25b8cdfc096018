"""``/api/v1/jobs`` (administrators): what the background jobs did, newest first.
Who leads the scheduler and its heartbeat are on ``/health``."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields

from app.api.auth import ApiBlueprint, admin_only, current_actor
from app.api.schemas import PageQuerySchema, UtcDateTime, page_schema
from app.models import JobStatus
from app.services import jobs
from app.web.filters import JobRunFilters

blp = ApiBlueprint(
    "jobs", __name__, url_prefix="/api/v1/jobs",
    description="Runs of the background jobs (administrators only).",
)

STATUSES = [s.value for s in JobStatus]


class JobRunSchema(Schema):
    id = fields.Integer(dump_only=True)
    job = fields.String(dump_only=True, metadata={"description": "e.g. node_health"})
    runner = fields.String(dump_only=True,
                           metadata={"description": "the process that ran it (host:pid:id)"})
    status = fields.String(dump_only=True, metadata={"enum": STATUSES})
    started_at = UtcDateTime()
    finished_at = UtcDateTime(allow_none=True)
    detail = fields.String(dump_only=True,
                           metadata={"description": "the job's summary, or the error"})


class JobRunQuerySchema(JobRunFilters, PageQuerySchema):
    pass


@blp.route("")
class JobRuns(MethodView):
    @admin_only
    @blp.arguments(JobRunQuerySchema, location="query")
    @blp.response(200, page_schema(JobRunSchema))
    def get(self, query: dict[str, Any]) -> Any:
        """List job runs, newest first, optionally for one job or status."""
        return jobs.list_runs(current_actor(), **query)
