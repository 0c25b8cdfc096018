"""Site checks end to end: real sshd, real nginx nodes on 127.0.0.x, each site asked
for through each node's SSH connection, with its own Host and SNI, and what the
nodes serve recorded as it is."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.models import Alert, AlertState, DeploymentStatus, Site
from app.services import alerts, certificates, deployments, jobs, nodes, uptime
from tests import factories, pki
from tests.conftest import api_headers
from tests.fleet import FleetNode, register, start_nginx
from tests.processes import free_port
from tests.sshd import SshServer
from tests.sshd import sshd_factory as sshd_factory  # noqa: F401  (fixture)

#: The nginx nodes of tests/integration/conftest.py's ``fleet``.
ADDRESSES = ("127.0.0.90", "127.0.0.91", "127.0.0.92")


class ClosingBackend:
    """A backend that answers 200 and closes every connection, so that stopping it
    stops the site at once (nginx keeps idle connections to backends that keep
    theirs, and would go on being answered through them).  Once told to ``stall``,
    it accepts and reads but never answers, holding each connection until the other
    side closes it."""

    def __init__(self) -> None:
        self.requests = 0
        self.stalled = 0
        self.released = 0
        # Calls on each stalled connection's release, in the releasing thread.
        self.on_release: Callable[[], None] = lambda: None
        self._stalling = False
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", free_port()))
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def stall(self) -> None:
        self._stalling = True

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # the listener was shut down
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            if self._stalling:
                with self._lock:
                    self.stalled += 1
                while conn.recv(4096):
                    pass
                with self._lock:
                    self.released += 1
                self.on_release()
                return
            head = b""
            while b"\r\n\r\n" not in head and (data := conn.recv(4096)):
                head += data
            with self._lock:
                self.requests += 1
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    def stop(self) -> None:
        """Stop accepting (again: a test may stop it before its fixture does)."""
        if self._listener.fileno() != -1:
            # Closing alone leaves a thread blocked in accept() accepting: shut it first.
            self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        self._accepting.join(timeout=10)
        for thread in self._threads:
            thread.join(timeout=10)


@pytest.fixture()
def closing_backends() -> Iterator[Callable[[], ClosingBackend]]:
    running: list[ClosingBackend] = []

    def start() -> ClosingBackend:
        running.append(ClosingBackend())
        return running[-1]

    yield start
    with ExitStack() as teardown:
        for backend in running:
            teardown.callback(backend.stop)


def deployed(actor: Any, site: Site) -> None:
    rollout = deployments.wait(deployments.deploy_site(actor, site.id).id, timeout=120)
    assert rollout.status == DeploymentStatus.SUCCEEDED, [
        (d.node_name, d.error) for d in rollout.deployments]


def latest(actor: Any, site: Site) -> dict[str, dict[str, Any]]:
    """The last check through each node of the site's pool, by node label."""
    return {n["node"]: n for n in uptime.site_uptime(actor, site.id)["nodes"]}


def window(actor: Any, site: Site, name: str = "24h") -> dict[str, Any]:
    return next(w for w in uptime.site_uptime(actor, site.id)["windows"] if w["window"] == name)


def test_a_site_is_up_through_every_node_and_down_once_its_backend_stops(
        client, admin, alice, fleet, closing_backends):
    backend = closing_backends()
    site = factories.make_site(alice, "shop.example.com",
                               backends=[{"host": "127.0.0.1", "port": backend.port}])
    deployed(alice, site)
    before = backend.requests  # the deployment's verification asked too

    assert uptime.check_sites() == "3 check(s) of 1 site(s) through 3 node(s): 3 up, 0 down"
    assert backend.requests == before + 3
    answer = client.get(f"/api/v1/sites/{site.id}/uptime", headers=api_headers(alice))
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["windows"][0] == {"window": "24h", "checks": 3, "failures": 0, "percent": 100.0}
    # The owner reads how many nodes answer, never the fleet's names or addresses.
    assert [n["node"] for n in body["nodes"]] == ["node 1 of 3", "node 2 of 3", "node 3 of 3"]
    assert all(n["node_id"] is None for n in body["nodes"])
    assert {(n["status"], n["status_code"], n["error"]) for n in body["nodes"]} == {
        ("up", 200, "")}
    assert all(n["response_ms"] > 0 and n["cert_sha256"] is None for n in body["nodes"])
    assert "edge-" not in answer.get_data(as_text=True)
    assert "127.0.0." not in answer.get_data(as_text=True)

    backend.stop()
    assert uptime.check_sites().endswith("0 up, 3 down")
    by_node = latest(admin, site)
    assert set(by_node) == {"edge-0", "edge-1", "edge-2"}
    assert {(n["status"], n["status_code"], n["error"]) for n in by_node.values()} == {
        ("down", 502, "the proxy answered HTTP 502")}
    assert window(alice, site) == {"window": "24h", "checks": 6, "failures": 3,
                                   "percent": 50.0}


def test_a_node_whose_proxy_stopped_reads_down_from_that_node_only(admin, alice, fleet,
                                                                    backends):
    backend = backends.start("api")
    site = factories.make_site(alice, "api.example.com",
                               backends=[{"host": "127.0.0.1", "port": backend.port}])
    deployed(alice, site)
    fleet[1].nginx.stop()

    assert uptime.check_sites().endswith("2 up, 1 down")
    by_node = latest(admin, site)
    assert by_node["edge-1"]["status"] == "down"
    assert by_node["edge-1"]["error"] == "the proxy refused the connection: is it running?"
    assert by_node["edge-1"]["status_code"] is None
    assert [by_node[n]["status"] for n in ("edge-0", "edge-2")] == ["up", "up"]
    assert window(alice, site)["percent"] == pytest.approx(200 / 3, abs=0.001)


def test_the_served_certificate_is_recorded_with_its_expiry(alice, fleet, backends):
    backend = backends.start("soon")
    site = factories.make_site(alice, "soon.example.com",
                               backends=[{"host": "127.0.0.1", "port": backend.port}])
    root = pki.root("Uptime Root")
    expiry = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    leaf, key = pki.leaf(root, ["soon.example.com"], not_after=expiry)
    certificates.upload_certificate(alice, site.id, pki.pem(leaf), pki.key_pem(key))
    rollout = deployments.list_rollouts(alice, site_id=site.id).items[0]
    assert deployments.wait(rollout.id, timeout=120).status == DeploymentStatus.SUCCEEDED

    assert uptime.check_sites().endswith("3 up, 0 down")
    fingerprint = certificates.certificate_to_dict(site)["fingerprint_sha256"]
    for check in latest(alice, site).values():
        assert check["status"] == "up"
        assert check["cert_not_after"] == expiry
        assert check["cert_sha256"] == fingerprint
        assert check["cert_matches"] is True


def test_a_node_that_missed_the_new_certificate_serves_one_that_does_not_match(
        admin, alice, fleet, backends):
    backend = backends.start("renewed")
    site = factories.make_site(alice, "renewed.example.com", ssl_mode="self_signed",
                               backends=[{"host": "127.0.0.1", "port": backend.port}])
    deployed(alice, site)
    first = certificates.certificate_to_dict(site)["fingerprint_sha256"]
    # The third node is out of the pool's deployments while the certificate changes.
    nodes.set_enabled(admin, fleet[2].id, False)
    root = pki.root("Replacement Root")
    leaf, key = pki.leaf(root, ["renewed.example.com"])
    certificates.upload_certificate(alice, site.id, pki.pem(leaf), pki.key_pem(key))
    rollout = deployments.list_rollouts(alice, site_id=site.id).items[0]
    assert deployments.wait(rollout.id, timeout=120).status == DeploymentStatus.SUCCEEDED
    nodes.set_enabled(admin, fleet[2].id, True)

    assert uptime.check_sites().endswith("3 up, 0 down")
    issued = certificates.certificate_to_dict(site)["fingerprint_sha256"]
    by_node = latest(admin, site)
    assert [(by_node[n]["cert_sha256"], by_node[n]["cert_matches"])
            for n in ("edge-0", "edge-1", "edge-2")] == [
        (issued, True), (issued, True), (first, False)]


def test_each_site_is_asked_for_by_its_own_name(alice, bob, fleet, backends, closing_backends):
    """Two TLS sites on the same nodes: each check reaches its own server block (its
    backend, its certificate), never the other's."""
    left_backend = backends.start("left")
    right_backend = closing_backends()
    left = factories.make_site(alice, "left.example.com", ssl_mode="self_signed",
                               backends=[{"host": "127.0.0.1", "port": left_backend.port}])
    right = factories.make_site(bob, "right.example.com", ssl_mode="self_signed",
                                backends=[{"host": "127.0.0.1", "port": right_backend.port}])
    deployed(alice, left)
    deployed(bob, right)
    right_backend.stop()
    before = left_backend.requests

    assert uptime.check_sites().endswith("3 up, 3 down")
    assert left_backend.requests == before + 3
    left_cert = certificates.certificate_to_dict(left)["fingerprint_sha256"]
    right_cert = certificates.certificate_to_dict(right)["fingerprint_sha256"]
    assert left_cert != right_cert
    assert {(n["status"], n["status_code"], n["cert_sha256"], n["cert_matches"])
            for n in latest(alice, left).values()} == {("up", 200, left_cert, True)}
    assert {(n["status"], n["status_code"], n["cert_sha256"], n["cert_matches"])
            for n in latest(bob, right).values()} == {("down", 502, right_cert, True)}


def test_a_backend_that_accepts_and_stalls_holds_back_no_other_site(
        app, alice, bob, fleet, backends, closing_backends, monkeypatch):
    """One thread at work: a stalled check is parked aside after a second, and the
    other site's checks go on meanwhile, up to its deadline."""
    monkeypatch.setitem(app.config, "SITE_CHECK_PARALLELISM", 1)
    monkeypatch.setitem(app.config, "SITE_CHECK_TIMEOUT", 5.0)
    good_backend = backends.start("good")
    hostile = closing_backends()
    good = factories.make_site(alice, "good.example.com",
                               backends=[{"host": "127.0.0.1", "port": good_backend.port}])
    stalled = factories.make_site(bob, "stalled.example.com",
                                  backends=[{"host": "127.0.0.1", "port": hostile.port}])
    deployed(alice, good)
    deployed(bob, stalled)
    before = good_backend.requests
    good_answered_at_release: list[int] = []
    hostile.on_release = lambda: good_answered_at_release.append(good_backend.requests - before)
    hostile.stall()

    assert uptime.check_sites().endswith("3 up, 3 down")
    assert {n["status"] for n in latest(alice, good).values()} == {"up"}
    assert {(n["status"], n["error"]) for n in latest(bob, stalled).values()} == {
        ("down", "no answer within 5 s")}
    # Every stalled request was given up (its connection closed), and when the first
    # was, the good site had been answered through every node already.
    hostile.stop()
    assert hostile.stalled == hostile.released == 3
    assert good_answered_at_release[0] == 3


@pytest.fixture()
def far_node(admin, fleet, sshd_factory) -> Iterator[tuple[FleetNode, SshServer]]:
    """A fourth node of the pool behind an sshd of its own, which a test can stop while
    the node's nginx goes on serving visitors."""
    server: SshServer = sshd_factory()
    nginx = start_nginx("127.0.0.93")
    with ExitStack() as teardown:
        teardown.callback(nginx.remove)
        teardown.callback(nginx.stop)
        yield register(admin, nginx, "edge-far", server.port, server.client_key_text), server


def test_a_node_out_of_reach_over_ssh_does_not_check_its_sites_and_counts_neither_way(
        client, db, admin, alice, fleet, far_node, closing_backends):
    """The node's proxy still serves the site to its visitors: a failed SSH connection
    is no evidence that the site is down, so it costs the site no uptime and raises
    no "site down", while the node's own health check and alert tell the
    administrators.  Through the nodes that answer, a site whose backend stops is still
    down."""
    edge_far, far_sshd = far_node
    backend = closing_backends()
    site = factories.make_site(alice, "reach.example.com",
                               backends=[{"host": "127.0.0.1", "port": backend.port}])
    deployed(alice, site)
    alerts.create_rule(admin, {"name": "Site down", "kind": "site_down", "threshold": 4})
    alerts.create_rule(admin, {"name": "Node unreachable", "kind": "node_unreachable"})
    far_sshd.stop(remove=False)
    assert edge_far.get("reach.example.com").status == 200  # visitors are still served

    assert uptime.check_sites() == ("4 check(s) of 1 site(s) through 4 node(s): 3 up, "
                                    "0 down; 1 not checked: 1 node(s) not reachable over SSH")
    by_node = latest(admin, site)
    assert by_node["edge-far"]["status"] == "unreachable"
    assert by_node["edge-far"]["error"] == "the node could not be reached over SSH"
    assert by_node["edge-far"]["status_code"] is None
    assert {by_node[f"edge-{i}"]["status"] for i in range(3)} == {"up"}
    assert window(alice, site) == {"window": "24h", "checks": 3, "failures": 0,
                                   "percent": 100.0}
    # The owner reads that one node did not check the site, not which node or where.
    answer = client.get(f"/api/v1/sites/{site.id}/uptime", headers=api_headers(alice))
    assert sorted(n["status"] for n in answer.get_json()["nodes"]) == [
        "unreachable", "up", "up", "up"]
    assert "edge-far" not in answer.get_data(as_text=True)
    assert "127.0.0." not in answer.get_data(as_text=True)

    assert jobs.run_recorded("node_health", jobs.check_node_health, "test").status.value \
        == "succeeded"
    alerts.evaluate()
    db.session.expire_all()
    firing = {(a.rule.kind.value, a.node_id, a.site_id)
              for a in db.session.query(Alert).filter(Alert.state == AlertState.FIRING)}
    assert firing == {("node_unreachable", edge_far.id, None)}

    # Down through every node that checked it: the unreachable node does not hold
    # the alert back (the rule asks for four nodes; three could check).
    backend.stop()
    assert uptime.check_sites().endswith(
        ": 0 up, 3 down; 1 not checked: 1 node(s) not reachable over SSH")
    assert window(alice, site) == {"window": "24h", "checks": 6, "failures": 3,
                                   "percent": 50.0}
    alerts.evaluate()
    db.session.expire_all()
    [down] = db.session.query(Alert).filter(Alert.site_id == site.id).all()
    assert down.state == AlertState.FIRING
    assert down.summary == ("reach.example.com fails its checks through 3 of 3 node(s) "
                            "(HTTP 502)")
