"""Background work that a request starts (a rollout, a certificate order) and that the
request must not wait for.

One interface for every kind of work, so that rollouts and certificate orders share
the rules: the work runs inside the application context, its database session is
removed when it ends whatever happened, an unexpected error is logged with the work's
name instead of vanishing with its thread, and the CLI and the tests can wait for a
piece of work by its key.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, current_app

from app.extensions import db
from app.observability import carry_request_id

logger = logging.getLogger(__name__)


class Executor:
    """Runs each piece of work in a daemon thread of its own, keyed by kind and id.

    Work is never queued behind other work: a certificate order waits for the rollout
    that serves its site, which must not sit behind that order in a queue.
    """

    def __init__(self) -> None:
        self._running: dict[tuple[str, int], threading.Thread] = {}
        self._lock = threading.Lock()

    def submit(self, kind: str, key: int, work: Callable[..., Any], *args: Any,
               app: Flask | None = None) -> None:
        """Start ``work(*args)`` in the background, inside ``app``'s context."""
        app = app or current_app._get_current_object()  # type: ignore[attr-defined]
        thread = threading.Thread(target=carry_request_id(self._run),
                                  args=(app, kind, key, work, args),
                                  name=f"{kind}-{key}", daemon=True)
        with self._lock:
            self._running[(kind, key)] = thread
        thread.start()

    def _run(self, app: Flask, kind: str, key: int, work: Callable[..., Any],
             args: tuple[Any, ...]) -> None:
        with app.app_context():
            try:
                work(*args)
            except Exception:
                logger.exception("%s %s failed unexpectedly", kind, key)
            finally:
                db.session.remove()
                with self._lock:
                    if self._running.get((kind, key)) is threading.current_thread():
                        del self._running[(kind, key)]

    def join(self, kind: str, key: int, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the work, if it is still running here."""
        with self._lock:
            thread = self._running.get((kind, key))
        if thread is not None:
            thread.join(timeout)

    def join_all(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds in all for every piece of work running here
        (what must end before its database is emptied); returns how many still run."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._running.values())
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return sum(thread.is_alive() for thread in threads)


executor = Executor()
