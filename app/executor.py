"""Background work: what a request starts and must not wait for (a rollout, a
certificate order, a notice), and the scheduler's jobs.

One interface for every kind of work, so that all of it shares the rules: the work
runs inside the application context, its database session is removed when it ends
whatever happened, it carries the id of the request that started it, an unexpected
error is logged with the work's name instead of vanishing, and the CLI and the tests
can wait for a piece of work by its key.

Where the work runs: in a thread of this process by default (nothing to install),
or on the task engine's workers (Celery on Redis, :mod:`app.tasks`) when
``CELERY_BROKER_URL`` is set.  A task names its work by the name the work was
registered under (:func:`background`), never by an importable path, and a worker
runs registered work only.  Work that a worker's task starts runs beside it, in that
worker's threads: a certificate order waits for the rollout that serves its site,
which must not sit in the queue behind the order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

from flask import Flask, current_app

from app.extensions import db
from app.observability import carry_request_id, request_id

if TYPE_CHECKING:
    from celery.result import AsyncResult

logger = logging.getLogger(__name__)

W = TypeVar("W", bound=Callable[..., Any])

#: Set in ``app.extensions`` of a task engine worker's app: work submitted there
#: runs in the worker's own threads.
WORKER = "rpcc_task_worker"
#: How many tasks sent from this process it remembers, to wait for them.
FOLLOWED_TASKS = 1000
#: Seconds between two looks at a task's state while waiting for it.
POLL_SECONDS = 0.1

_registry: dict[str, Callable[..., Any]] = {}
_names: dict[Callable[..., Any], str] = {}

# The threads that the work of a worker's task started, from any depth: the task
# ends when they have.
_started_by_task: ContextVar[list[threading.Thread] | None] = ContextVar(
    "rpcc_started_by_task", default=None)


class UnknownWork(LookupError):
    """Work that was never registered with :func:`background`."""


def background(name: str) -> Callable[[W], W]:
    """Register a function as background work called ``name``: the name is what a
    task carries, and what a worker looks up; no other function can be run by one.
    Its arguments must be JSON values (or types :mod:`app.tasks` knows)."""

    def register(work: W) -> W:
        known = _registry.get(name)
        if known is not None and known.__qualname__ != work.__qualname__:
            raise ValueError(f"background work {name!r} is {known.__qualname__} already")
        if known is not None:
            _names.pop(known, None)  # the same function, its module imported again
        _registry[name] = work
        _names[work] = name
        return work

    return register


def registered(name: str) -> Callable[..., Any]:
    """:raises UnknownWork: unless some work is registered as ``name``."""
    work = _registry.get(name)
    if work is None:
        raise UnknownWork(f"no background work is called {name!r}")
    return work


def distributed(app: Flask) -> bool:
    """Whether work submitted in ``app`` goes to the task engine's workers."""
    return bool(app.config.get("CELERY_BROKER_URL")) and not app.extensions.get(WORKER)


def perform(app: Flask, label: str, work: Callable[..., Any], args: Sequence[Any]) -> None:
    """Run ``work(*args)`` in an app context of ``app``, as every piece of background
    work runs wherever it runs: an error is logged, never raised, and the session goes."""
    with app.app_context():
        try:
            work(*args)
        except Exception:
            logger.exception("%s failed unexpectedly", label)
        finally:
            db.session.remove()


class Executor:
    """Runs each piece of work in a daemon thread of its own, or sends it to the task
    engine, keyed by kind and id.

    Work is never queued behind other work in this process; on the task engine, each
    worker process takes one task at a time and the work a task starts runs beside it.
    """

    def __init__(self) -> None:
        self._running: dict[tuple[str, int], threading.Thread] = {}
        self._sent: OrderedDict[tuple[str, int], AsyncResult] = OrderedDict()
        self._lock = threading.Lock()

    def submit(self, kind: str, key: int, work: Callable[..., Any], *args: Any,
               app: Flask | None = None) -> None:
        """Start ``work(*args)`` in the background, inside ``app``'s context.

        :raises UnknownWork: when ``work`` is not registered (:func:`background`),
            whether or not the task engine is on, so that a missing registration shows
            in every test run.
        """
        app = app or current_app._get_current_object()  # type: ignore[attr-defined]
        name = _names.get(work)
        if name is None:
            raise UnknownWork(f"{work.__qualname__} is not registered background work")
        if distributed(app):
            from app import tasks

            sent = tasks.send(app, name, args, request_id.get())
            if sent is not None:
                with self._lock:
                    self._sent[(kind, key)] = sent
                    self._sent.move_to_end((kind, key))
                    while len(self._sent) > FOLLOWED_TASKS:
                        self._sent.popitem(last=False)
                return
            # The broker cannot be reached: the work runs here rather than not at all.
        started = _started_by_task.get()
        thread = threading.Thread(target=carry_request_id(self._run),
                                  args=(app, kind, key, work, args, started),
                                  name=f"{kind}-{key}", daemon=True)
        with self._lock:
            self._running[(kind, key)] = thread
        if started is not None:
            started.append(thread)
        thread.start()

    def _run(self, app: Flask, kind: str, key: int, work: Callable[..., Any],
             args: tuple[Any, ...], started: list[threading.Thread] | None) -> None:
        _started_by_task.set(started)
        try:
            perform(app, f"{kind} {key}", work, args)
        finally:
            with self._lock:
                if self._running.get((kind, key)) is threading.current_thread():
                    del self._running[(kind, key)]

    def run_task(self, app: Flask, name: str, args: Sequence[Any], origin: str) -> None:
        """Run the registered work ``name`` for a task of the task engine, then wait
        for the work it started here: the task is acknowledged only once all of it
        has ended, so a worker that dies meanwhile has the task run again.

        :param origin: the id of the request that submitted the work.
        :raises UnknownWork: for a name nothing is registered as.
        """
        work = registered(name)
        started: list[threading.Thread] = []
        origin_token = request_id.set(origin)
        started_token = _started_by_task.set(started)
        try:
            perform(app, name, work, args)
            while started:
                started.pop(0).join()
        finally:
            _started_by_task.reset(started_token)
            request_id.reset(origin_token)

    def join(self, kind: str, key: int, timeout: float | None) -> None:
        """Wait up to ``timeout`` seconds (None: as long as it takes) for the work, if
        this process started it and it is still running.

        Work sent to the task engine is followed through its result in the result
        backend, the one record that every kind of work has and that tells when the
        work ended whichever worker ran it (again, after another died).  The work's
        own records (a rollout's status) are in the database for anyone else.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            thread = self._running.get((kind, key))
            sent = self._sent.get((kind, key))
        if thread is not None:
            thread.join(timeout)
        if sent is not None and self._wait_sent(sent, deadline):
            with self._lock:
                if self._sent.get((kind, key)) is sent:
                    del self._sent[(kind, key)]

    def _wait_sent(self, sent: AsyncResult, deadline: float | None) -> bool:
        """Whether the task ended by ``deadline``; a result backend that cannot be
        read counts as ended (there is nothing left to wait on)."""
        while True:
            try:
                if sent.ready():
                    return True
            except Exception:  # noqa: BLE001 - reported; the caller goes on without it
                logger.warning("cannot follow task %s: its result backend does not answer",
                               sent.id, exc_info=True)
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS)

    def join_all(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds in all for every piece of work this process
        started (what must end before its database is emptied); returns how many
        still run."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._running.values())
            sent = list(self._sent.items())
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        waiting = 0
        for handle, result in sent:
            if self._wait_sent(result, deadline):
                with self._lock:
                    if self._sent.get(handle) is result:
                        del self._sent[handle]
            else:
                waiting += 1
        return sum(thread.is_alive() for thread in threads) + waiting


executor = Executor()
