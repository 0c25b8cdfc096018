"""Node metrics from real Glances: several nodes on loopback, each reached through
the real sshd's forwarded channels to its own Glances (``ssh://`` in its
``glances_url``) or directly over HTTP; Glances 4 answers come from recorded
answers of real Glances 4 servers, served both ways."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from app.extensions import ssh
from app.models import Node, NodeMetric
from app.services import monitoring
from app.services.monitoring import glances
from tests import factories
from tests.glances import Glances, recorded_v4, trickling
from tests.glances import recorded_glances as recorded_glances  # noqa: F401  (fixture)
from tests.processes import free_port
from tests.sshd import SshServer


@pytest.fixture(scope="module")
def real_glances() -> Iterator[list[Glances]]:
    """Two real Glances 3 servers, one per node address (started once: each takes
    seconds)."""
    servers: list[Glances] = []
    try:
        for address in ("127.0.0.71", "127.0.0.72"):
            servers.append(Glances(address))
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture()
def pooled(app) -> Iterator[None]:
    yield
    ssh.reset(app)


def make_node(sshd: SshServer, name: str, glances_url: str | None, **extra) -> Node:
    """A node with Glances only: no proxy answers on its status port (the default one
    may be another test's nginx on this machine's loopback)."""
    extra.setdefault("status_port", free_port())
    return factories.make_node(name, host="127.0.0.1", ssh_port=sshd.port,
                               ssh_private_key=sshd.client_key_text, glances_url=glances_url,
                               **extra)


def samples(db, node_id: int) -> list[NodeMetric]:
    db.session.expire_all()
    return list(db.session.scalars(select(NodeMetric).where(NodeMetric.node_id == node_id)))


def test_metrics_arrive_through_the_tunnel_and_over_http_and_a_node_without_glances_has_none(
        app, db, sshd, real_glances, pooled):
    first, second = real_glances
    tunnelled = make_node(sshd, "edge-1", f"ssh://{first.address}:{first.port}")
    # It spoke v4 last time: it is asked first, answers 404, and v3 is found.
    upgraded = make_node(sshd, "edge-2", f"ssh://{second.address}:{second.port}")
    upgraded.glances_api = "4"
    direct = make_node(sshd, "edge-3", second.url)
    bare = make_node(sshd, "edge-4", f"ssh://127.0.0.73:{free_port('127.0.0.73')}")
    disabled = make_node(sshd, "edge-5", f"ssh://{first.address}:{first.port}", enabled=False)
    db.session.commit()

    summary = monitoring.poll_node_metrics()

    assert summary.startswith("4 node(s) in ")
    assert summary.endswith(": 3 with metrics, 1 without Glances, 0 failed")
    mounts = sorted(fs["mnt_point"] for fs in first.get("fs"))
    uptime_after = glances.parse_uptime(first.get("uptime"))
    for node in (tunnelled, upgraded, direct):
        [sample] = samples(db, node.id)
        assert sample.period == 0 and sample.samples == 1
        assert 0 <= sample.cpu_percent <= 100 and 0 < sample.mem_percent < 100
        assert sample.load1 is not None and sample.load15 is not None
        assert [fs["mount"] for fs in sample.filesystems] == mounts
        assert sample.disk_percent == max(fs["percent"] for fs in sample.filesystems)
        assert sample.net_rx_bps == 0.0 and sample.net_tx_bps == 0.0  # loopback only
        # The machine's uptime, as each Glances last refreshed it (every 2 s).
        assert abs(sample.uptime_seconds - uptime_after) < 60
        assert sample.connections is None and sample.requests_per_second is None
        row = db.session.get(Node, node.id)
        assert (row.glances_api, row.metrics_error) == ("3", "")
        assert row.metrics_at is not None
    absent = db.session.get(Node, bare.id)
    assert samples(db, bare.id) == []
    assert absent.glances_api is None and absent.metrics_at is None
    assert absent.metrics_error.startswith("no Glances: nothing listens on 127.0.0.73:")
    assert samples(db, disabled.id) == []


def test_glances_4_shapes_through_the_tunnel_on_one_channel_and_over_http(
        app, db, sshd, recorded_glances, pooled):
    newer = recorded_glances("4.4.0_dev5", "127.0.0.74")
    older = recorded_glances("4.3.0.4", "127.0.0.75")
    tunnelled = make_node(sshd, "edge-6", f"ssh://{newer.address}:{newer.port}")
    direct = make_node(sshd, "edge-7", older.url)

    assert monitoring.poll_node_metrics().endswith(": 2 with metrics, 0 without Glances, "
                                                   "0 failed")

    for node, server, version in ((tunnelled, newer, "4.4.0_dev5"), (direct, older, "4.3.0.4")):
        [sample] = samples(db, node.id)
        expected = glances.parse("4", recorded_v4(version)).columns()
        assert {name: getattr(sample, name) for name in expected} == expected
        assert db.session.get(Node, node.id).glances_api == "4"
        assert server.requests == [f"/api/4/{plugin}" for plugin in glances.PLUGINS]
    # Glances 4 keeps the connection open: the tunnel asked everything on one channel.
    assert len(newer.connections) == 1


def test_a_node_that_hangs_is_given_up_and_the_others_are_read(
        app, db, sshd, real_glances, pooled, monkeypatch):
    silent = socket.create_server(("127.0.0.76", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:  # takes connections and never answers
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        monkeypatch.setitem(app.config, "METRICS_NODE_TIMEOUT", 3.0)
        hanging = make_node(sshd, "edge-8", f"ssh://127.0.0.76:{silent.getsockname()[1]}")
        fine = make_node(sshd, "edge-9", f"ssh://{real_glances[0].address}:"
                                         f"{real_glances[0].port}")

        assert monitoring.poll_node_metrics().endswith(": 1 with metrics, 0 without "
                                                       "Glances, 1 failed")
        assert len(samples(db, fine.id)) == 1
        stuck = db.session.get(Node, hanging.id)
        assert "did not answer" in stuck.metrics_error and samples(db, hanging.id) == []
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        silent.close()


def test_a_missing_glances_is_logged_once_per_change_of_state(app, db, sshd, real_glances,
                                                              pooled, caplog, monkeypatch):
    port = free_port("127.0.0.77")
    node = make_node(sshd, "edge-10", f"ssh://127.0.0.77:{port}")
    # The migrations' logging.config.fileConfig disabled the loggers that existed.
    logger = "app.services.monitoring.node_metrics"
    monkeypatch.setattr(logging.getLogger(logger), "disabled", False)
    caplog.set_level(logging.INFO, logger=logger)

    for _ in range(3):
        monitoring.poll_node_metrics()
    said = [r.getMessage() for r in caplog.records if "edge-10" in r.getMessage()]
    assert len(said) == 1 and "no metrics: no Glances" in said[0]

    late = Glances("127.0.0.77", port)
    try:
        monitoring.poll_node_metrics()
        monitoring.poll_node_metrics()
    finally:
        late.stop()
    said = [r.getMessage() for r in caplog.records if "edge-10" in r.getMessage()]
    assert len(said) == 2 and "metrics again (Glances API 3)" in said[1]
    assert len(samples(db, node.id)) == 2


def test_an_answer_trickling_through_the_tunnel_is_cut_at_the_nodes_deadline(app, sshd,
                                                                             pooled):
    """A node that sends its answer a byte at a time cannot hold the reading thread
    past the node's time: the read ends while the node is still sending."""
    with trickling("127.0.0.78") as trickle:
        transport = glances.TunnelTransport(
            ssh.pool(app), sshd.target(pinned=True), "127.0.0.78", trickle.port,
            deadline=time.monotonic() + 2)
        with pytest.raises(glances.GlancesError, match="did not answer in time"):
            glances.read(transport, "3")
        assert not trickle.finished.is_set()
