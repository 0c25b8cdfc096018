"""Progress streams are bounded: slots per user and per process, never every thread of
a worker, and a client that went away is seen without writing to it (streams through
the app are in tests/db/test_progress_streams.py, the real gunicorn side in
tests/integration/test_progress_streams.py)."""

from __future__ import annotations

import socket

import pytest

from app.stream_slots import StreamSlots, process_capacity
from app.web.deployment_pages import _client_gone


def test_slots_are_capped_per_user_and_in_total_and_released_once():
    slots = StreamSlots(per_user=2, per_process=3)
    first, second = slots.acquire(1), slots.acquire(1)
    assert first and second and slots.acquire(1) is None  # the user's cap
    third = slots.acquire(2)
    assert third and slots.acquire(3) is None  # the process's cap, whoever asks
    first.release()
    first.release()  # a second release gives nothing back twice
    assert slots.open_streams() == 2 and slots.open_streams(1) == 1
    assert slots.acquire(3) and slots.acquire(3) is None


@pytest.mark.parametrize("configured,threads,capacity", [
    (0, 8, 4), (0, 2, 1), (0, 1, 0), (10, 8, 7), (3, 8, 3), (0, None, 4), (6, None, 6)])
def test_streams_never_take_every_thread_of_a_worker(configured, threads, capacity):
    assert process_capacity(configured, threads) == capacity


def test_a_closed_peer_is_seen_without_writing():
    ours, theirs = socket.socketpair()
    try:
        assert _client_gone(ours) is False
        theirs.sendall(b"GET / HTTP/1.1\r\n")  # pipelined bytes are not an end
        assert _client_gone(ours) is False
        theirs.close()
        ours.recv(64)
        assert _client_gone(ours) is True
    finally:
        ours.close()
    assert _client_gone(None) is False
