"""Deployment pages shared by the admin and client panels: the progress page and
its Server-Sent Events stream."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from flask import Response, current_app, render_template, stream_with_context, url_for

from app.extensions import db
from app.models import User
from app.services import deployments

# A stream ends with its deployment, or after this long (the browser reconnects).
STREAM_SECONDS = 600
POLL_SECONDS = 0.5


def detail(actor: User, rollout_id: int, panel: str) -> str:
    rollout = deployments.get_rollout(actor, rollout_id)
    site_url = (url_for(f"{panel}.site_detail", site_id=rollout.site_id)
                if rollout.site_id else "")
    return render_template("deployments/detail.html", rollout=rollout, site_url=site_url,
                           state=deployments.rollout_to_dict(rollout, actor),
                           events_url=url_for(f"{panel}.deployment_events",
                                              rollout_id=rollout.id))


def _state(actor: User, rollout_id: int) -> dict[str, Any]:
    db.session.expire_all()
    rollout = deployments.get_rollout(actor, rollout_id)
    state = deployments.rollout_to_dict(rollout, actor)
    state["finished"] = rollout.status.finished
    return state


def events(actor: User, rollout_id: int) -> Response:
    """The rollout's state as JSON whenever it changes, until it finishes.

    Reading the database (not an in-process queue) lets any app instance serve the
    stream of a deployment that another instance runs.
    """
    deployments.get_rollout(actor, rollout_id)  # 404 before the stream starts
    actor_id = actor.id

    def generate() -> Iterator[str]:
        user = db.session.get(User, actor_id)
        assert user is not None
        deadline = time.monotonic() + STREAM_SECONDS
        last = ""
        while time.monotonic() < deadline:
            state = _state(user, rollout_id)
            payload = json.dumps(state, default=str)
            if payload != last:
                last = payload
                yield f"data: {payload}\n\n"
            if state["finished"]:
                return
            db.session.rollback()  # end the read transaction between polls
            time.sleep(POLL_SECONDS)

    response = Response(stream_with_context(generate()), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"
    current_app.logger.debug("event stream for rollout %s", rollout_id)
    return response
