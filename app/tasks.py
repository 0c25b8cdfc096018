"""The task engine: Celery workers on Redis, used when ``CELERY_BROKER_URL`` is set.

One task, ``rpcc.work``, carries the name under which some background work was
registered (:func:`app.executor.background`), its arguments as JSON and the id of
the request that asked for it.  A worker looks the name up among the registered
work and runs nothing else, inside an app context of its own app (``create_app``,
as every process of the product builds it): the same code, records and leases as
the threads of the in-process executor.

Delivery is at least once.  A task is acknowledged when it ends
(``task_acks_late``), and a pool process that dies while running one hands it back
at once (``task_reject_on_worker_lost``), so another process runs it again; each
process reserves one task at a time (``worker_prefetch_multiplier``), so no task
waits behind a long rollout while another process is idle.  Running a piece of
work twice is therefore expected: a rollout checks its status first and carries on
from its unfinished nodes once the dead run's leases expire; jobs are idempotent.

Redis also hands a task out again when it stays unacknowledged longer than its
visibility timeout (``CELERY_VISIBILITY_TIMEOUT``), even while its worker still
runs it.  The default, an hour, is longer than any task should take (a rollout
waits at most ``DEPLOY_LOCK_WAIT`` for a node): a second run of a live rollout
would only wait for the first to end.  It is also how long the task of a worker
that vanished whole (its machine, or its main process killed) waits to run again.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Sequence
from typing import Any

from celery import Celery, signals
from celery.backends.redis import RedisBackend
from celery.result import AsyncResult
from flask import Flask
from kombu.exceptions import OperationalError
from kombu.utils.json import register_type

from app.executor import WORKER, executor
from app.extensions import db
from app.services.notifiers.base import Notice

logger = logging.getLogger(__name__)

TASK = "rpcc.work"
QUEUE = "rpcc"
_CELERY = "rpcc_celery"
_lock = threading.Lock()

# Arguments travel as JSON: besides JSON's own values, these types (only these)
# are rebuilt on the worker.
register_type(Notice, "rpcc.notice", dataclasses.asdict, lambda fields: Notice(**fields))


class PolledRedisBackend(RedisBackend):
    """Results in Redis, read by polling (:meth:`app.executor.Executor.join` asks for
    a task's state, never blocks on it): sending a task subscribes to nothing, so a
    web process that never waits holds no subscription per task, and a Redis that
    is down fails a send at once rather than after twenty reconnection attempts."""

    def on_task_call(self, producer: Any, task_id: str) -> None:
        """Nothing to subscribe to: see the class."""

    def remove_pending_result(self, result: AsyncResult) -> AsyncResult:
        """Nothing was waited on (see the class), so nothing to stop waiting on; a
        result dropped as the interpreter exits would otherwise call into a module
        already torn down."""
        return result


def celery_app(app: Flask) -> Celery:
    """The Celery app of ``app`` (one per Flask app), configured from its settings,
    with the one task that runs registered work in ``app``."""
    with _lock:
        celery: Celery | None = app.extensions.get(_CELERY)
        if celery is not None:
            return celery
        config = app.config
        broker = config["CELERY_BROKER_URL"]
        celery = Celery(app.import_name, set_as_current=False)
        celery.conf.update(
            broker_url=broker,
            result_backend=f"{__name__}:{PolledRedisBackend.__name__}+{broker}",
            broker_transport_options={"visibility_timeout": config["CELERY_VISIBILITY_TIMEOUT"]},
            broker_connection_retry_on_startup=True,
            task_default_queue=QUEUE,
            task_serializer="json",
            result_serializer="json",
            accept_content=["json"],
            result_accept_content=["json"],
            task_acks_late=True,
            task_reject_on_worker_lost=True,
            worker_prefetch_multiplier=1,
            # Production logs are JSON lines from the app's own handler.
            worker_hijack_root_logger=not config["LOG_JSON"],
            enable_utc=True,
        )

        @celery.task(name=TASK)
        def work(name: str, args: list[Any], request_id: str = "") -> None:
            executor.run_task(app, name, args, request_id)

        app.extensions[_CELERY] = celery
        return celery


def send(app: Flask, name: str, args: Sequence[Any], request_id: str) -> AsyncResult | None:
    """Queue the registered work ``name``; None when the broker cannot be reached
    (the caller then runs the work itself: a deploy request is not refused because
    Redis is down)."""
    try:
        return celery_app(app).send_task(TASK, args=(name, list(args)),
                                         kwargs={"request_id": request_id})
    except OperationalError:
        logger.warning("the task engine's broker cannot be reached: %s runs in this process",
                       name, exc_info=True)
        return None


def run_worker(app: Flask, arguments: Sequence[str]) -> None:
    """Run a worker of the task engine in this process until it is stopped;
    ``arguments`` go to ``celery worker`` (``--concurrency``, ``--pool``,
    ``--hostname``...).

    :raises RuntimeError: when ``CELERY_BROKER_URL`` is not set.
    """
    if not app.config["CELERY_BROKER_URL"]:
        raise RuntimeError("CELERY_BROKER_URL is not set: without a broker, background "
                           "work runs in the app's own processes and needs no worker")
    app.extensions[WORKER] = True
    celery = celery_app(app)

    def fresh_connections(**_: Any) -> None:
        """A pool process is a fork of the worker: it opens database connections of
        its own rather than share any its parent opened."""
        with app.app_context():
            db.engine.dispose(close=False)

    signals.worker_process_init.connect(fresh_connections, weak=False)
    celery.worker_main(["worker", "--loglevel", "INFO", *arguments])
