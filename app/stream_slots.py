"""Places for progress streams in this process.

A Server-Sent Events stream holds one of the worker's threads for as long as it
lasts, so streams are capped per user (one tenant cannot take every place) and in
total (always fewer than the worker's threads, so other requests find one).  The
counts are per process on purpose: the threads they protect are.  A stream gives its
place back however it ends: finished, timed out, or its client gone.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

from flask import Flask

log = logging.getLogger(__name__)

# Outside gunicorn (the development server) the worker's threads are unknown: half of
# gunicorn's default eight.
DEFAULT_PER_PROCESS = 4


class Slot:
    """One open stream's place.  Released from the stream's ``finally`` and from the
    response's close (a stream never iterated has no ``finally`` to run): releasing
    twice gives back one place."""

    def __init__(self, owner: StreamSlots, user_id: int) -> None:
        self._owner = owner
        self.user_id = user_id
        self._released = False

    def release(self) -> None:
        self._owner._give_back(self)


class StreamSlots:
    def __init__(self, per_user: int, per_process: int) -> None:
        self.per_user = per_user
        self.per_process = per_process
        self._lock = threading.Lock()
        self._by_user: Counter[int] = Counter()

    def acquire(self, user_id: int) -> Slot | None:
        """A place for one more stream of this user, or None when either cap is reached."""
        with self._lock:
            if (self._by_user[user_id] >= self.per_user
                    or self._by_user.total() >= self.per_process):
                return None
            self._by_user[user_id] += 1
            return Slot(self, user_id)

    def _give_back(self, slot: Slot) -> None:
        with self._lock:
            if slot._released:
                return
            slot._released = True
            self._by_user[slot.user_id] -= 1
            if self._by_user[slot.user_id] <= 0:
                del self._by_user[slot.user_id]

    def open_streams(self, user_id: int | None = None) -> int:
        with self._lock:
            return self._by_user[user_id] if user_id is not None else self._by_user.total()


def process_capacity(configured: int, threads: int | None) -> int:
    """Streams one process may hold: the setting, or half the worker's threads when it
    is 0, and never all the threads (a single-threaded worker holds none: its pages
    fall back to polling)."""
    if threads is None:
        return configured or DEFAULT_PER_PROCESS
    capacity = min(configured or threads // 2, threads - 1)
    if configured and capacity < configured:
        log.warning("PROGRESS_STREAMS_PER_PROCESS=%d leaves no thread for other requests "
                    "(%d threads per worker): %d streams at most", configured, threads,
                    capacity)
    return max(0, capacity)


_CREATE = threading.Lock()


def stream_slots(app: Flask) -> StreamSlots:
    """This app's places, sized on first use (gunicorn has told the app its thread
    count by then: see ``gunicorn.conf.py``)."""
    slots: StreamSlots | None = app.extensions.get("rpcc_stream_slots")
    if slots is None:
        with _CREATE:
            slots = app.extensions.get("rpcc_stream_slots")
            if slots is None:
                slots = StreamSlots(
                    app.config["PROGRESS_STREAMS_PER_USER"],
                    process_capacity(app.config["PROGRESS_STREAMS_PER_PROCESS"],
                                     app.config.get("WORKER_THREADS")))
                app.extensions["rpcc_stream_slots"] = slots
    return slots
