"""A deployment's pages, the same in both panels: the progress page and its
Server-Sent Events stream.  Links stay in the panel the page was asked from."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from typing import Any

from flask import (
    Response,
    current_app,
    jsonify,
    render_template,
    request,
    stream_with_context,
    url_for,
)

from app.services import deployments
from app.stream_slots import stream_slots
from app.web import current_actor

POLL_SECONDS = 0.5
# A refused stream's page polls meanwhile; it may try a stream again after this.
STREAM_RETRY_SECONDS = 30


def deployment_detail(rollout_id: int) -> str:
    actor = current_actor()
    rollout = deployments.get_rollout(actor, rollout_id)
    site_url = url_for(".site_detail", site_id=rollout.site_id) if rollout.site_id else ""
    return render_template("shared/deployment_detail.html", rollout=rollout,
                           site_url=site_url, state=deployments.rollout_to_dict(rollout, actor),
                           events_url=url_for(".deployment_events", rollout_id=rollout.id))


def _client_gone(sock: Any) -> bool:
    """Whether the client closed its end.  A stream writes nothing while its rollout
    waits, so a closed page would otherwise keep its place until a write failed."""
    if not isinstance(sock, socket.socket):
        return False
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        if not poller.poll(0):
            return False
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ValueError:  # TLS sockets take no flags: the heartbeat finds out instead
        return False
    except OSError:
        return True


def deployment_events(rollout_id: int) -> Response:
    """The rollout's state as JSON whenever it changes, until it finishes; one state
    when JSON is asked for (what the page polls when no stream is to be had).

    Reading the database (not an in-process queue) lets any app instance serve the
    stream of a deployment that another instance runs.  Each stream holds a worker
    thread, so streams are capped (``app.stream_slots``): beyond the cap the answer
    is 429 with ``Retry-After`` and the page polls instead.
    """
    actor = current_actor()
    deployments.get_rollout(actor, rollout_id)  # 404 before the stream starts
    wanted = request.accept_mimetypes.best_match(["text/event-stream", "application/json"])
    if wanted == "application/json":
        return jsonify(deployments.rollout_state(actor.id, rollout_id))
    slot = stream_slots(current_app).acquire(actor.id)
    if slot is None:
        refused = Response("Too many progress streams are open: the page follows the "
                           f"deployment by polling. Try again in {STREAM_RETRY_SECONDS} "
                           "seconds.\n", status=429, mimetype="text/plain")
        refused.headers["Retry-After"] = str(STREAM_RETRY_SECONDS)
        return refused
    actor_id = actor.id
    config = current_app.config
    longest, heartbeat = config["PROGRESS_STREAM_SECONDS"], config["PROGRESS_STREAM_HEARTBEAT"]
    client = request.environ.get("gunicorn.socket")

    def generate() -> Iterator[str]:
        try:
            now = time.monotonic()
            deadline, beat = now + longest, now + heartbeat
            last = ""
            while time.monotonic() < deadline and not _client_gone(client):
                state = deployments.rollout_state(actor_id, rollout_id)
                payload = json.dumps(state, default=str)
                if payload != last:
                    last = payload
                    beat = time.monotonic() + heartbeat
                    yield f"data: {payload}\n\n"
                elif time.monotonic() >= beat:
                    # A comment: proxies keep the connection, and a vanished client
                    # makes the write fail where the check above cannot see it.
                    beat = time.monotonic() + heartbeat
                    yield ": still running\n\n"
                if state["finished"]:
                    return
                time.sleep(POLL_SECONDS)
        finally:
            slot.release()

    response = Response(stream_with_context(generate()), mimetype="text/event-stream")
    # A stream that is never iterated runs no ``finally``: closing releases it too.
    response.call_on_close(slot.release)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"
    current_app.logger.debug("event stream for rollout %s", rollout_id)
    return response
