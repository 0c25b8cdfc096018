"""The proxies' own counters, read by the control plane through the nodes' SSH
connections: real sshd, real nginx and Caddy nodes on loopback, pools deployed the
way the control plane deploys them, real requests held open and counted.

Neither the status listener nor the metrics can be reached from the network: they
listen on the node's loopback only, where no site can listen, whatever a client
sends as its Host.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.engines.base import STATUS_PATH
from app.extensions import db, ssh
from app.models import DeploymentStatus, Node, NodeMetric
from app.services import deployments, monitoring, nodes
from app.services.monitoring.proxy_status import (
    ProxyStatusUnavailable,
    read_proxy_status,
    requests_per_second,
)
from tests import factories
from tests.caddy_node import CaddyNode
from tests.fleet import FleetNode, register, register_caddy, start_nginx
from tests.nginx_node import NginxNode, fetch
from tests.processes import free_port

NGINX_ADDRESS, CADDY_ADDRESS, BARE_ADDRESS = "127.0.0.60", "127.0.0.61", "127.0.0.62"
# Requests the tests count on a node.
REQUESTS = 7
# Seconds a held request may wait at most (it is released by the test, not by time).
HOLD_LIMIT = 30


class HeldBackend:
    """A backend that answers "/" at once and holds "/held" until released: a
    request in flight through the proxy for as long as a test needs."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.release = threading.Event()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path == "/held":
                    backend.arrived.set()
                    backend.release.wait(HOLD_LIMIT)
                body = b"backend"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                """Quiet: the tests assert on the proxy's counters."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture()
def backend() -> Iterator[HeldBackend]:
    held = HeldBackend()
    yield held
    held.stop()


def get(host: str, port: int, domain: str, path: str = "/") -> tuple[int, str]:
    conn = http.client.HTTPConnection(host, port, timeout=HOLD_LIMIT)
    try:
        conn.request("GET", path, headers={"Host": domain})
        answer = conn.getresponse()
        return answer.status, answer.read().decode(errors="replace")
    finally:
        conn.close()


class HeldRequest:
    """One request through the proxy to the backend's "/held", in a thread, until
    the backend releases it."""

    def __init__(self, backend: HeldBackend, host: str, port: int, domain: str) -> None:
        self.backend = backend
        self.answer: tuple[int, str] | None = None
        self.thread = threading.Thread(
            target=lambda: setattr(self, "answer", get(host, port, domain, "/held")))

    def __enter__(self) -> HeldRequest:
        self.thread.start()
        assert self.backend.arrived.wait(HOLD_LIMIT), "the held request never arrived"
        return self

    def __exit__(self, *exc: object) -> None:
        self.backend.release.set()
        self.thread.join(HOLD_LIMIT)
        assert self.answer == (200, "backend")


def deploy_site(alice: Any, domain: str, backend: HeldBackend) -> None:
    site = factories.make_site(alice, domain,
                               backends=[{"host": "127.0.0.1", "port": backend.port}])
    rollout = deployments.wait(deployments.deploy_site(alice, site.id).id, timeout=120)
    assert rollout.status == DeploymentStatus.SUCCEEDED, rollout.error


def row(admin: Any, node_id: int) -> Node:
    return nodes.get_node(admin, node_id)


# --- nginx -----------------------------------------------------------------------------

@pytest.fixture()
def edge(app, admin, sshd) -> Iterator[FleetNode]:
    nginx = start_nginx(NGINX_ADDRESS)
    try:
        yield register(admin, nginx, "edge-status", sshd.port, sshd.client_key_text)
    finally:
        ssh.reset(app)
        nginx.stop()
        nginx.remove()


def test_nginx_counts_a_held_request_and_every_request_served(admin, alice, edge, backend):
    deploy_site(alice, "shop.example.com", backend)
    node = row(admin, edge.id)
    with HeldRequest(backend, NGINX_ADDRESS, edge.nginx.http_port, "shop.example.com"):
        held = read_proxy_status(node)
        assert held.active_connections >= 1
    before = read_proxy_status(node)
    for _ in range(REQUESTS):
        assert edge.get("shop.example.com").status == 200
    after = read_proxy_status(node)
    # nginx counts the request that reads the counters, as any other.
    assert after.requests_total - before.requests_total == REQUESTS + 1
    assert after.at >= before.at
    rate = requests_per_second(before, after)
    assert rate is None if after.at == before.at else rate > 0


@pytest.mark.parametrize("path", [STATUS_PATH, "/nginx_status", "/status", "/"])
def test_no_host_reaches_the_status_listener_through_the_public_one(admin, alice, edge,
                                                                    backend, path):
    """Whatever the Host, the absolute URI or the path, a request to the node's public
    listener gets a site or nothing, never the counters; and the status port does
    not listen on the public address at all."""
    deploy_site(alice, "rpcc-status.example.com", backend)
    port = edge.nginx.status_port
    hosts = ["127.0.0.1", f"127.0.0.1:{port}", "localhost", f"localhost:{port}",
             NGINX_ADDRESS, "rpcc-probe.invalid", "rpcc-status.example.com", "unknown.test"]
    answers = [fetch(edge.nginx, host, path) for host in hosts]
    answers.append(fetch(edge.nginx, "rpcc-status.example.com",
                         f"http://127.0.0.1:{port}{STATUS_PATH}"))
    for answer in answers:
        assert "Active connections" not in answer.body and "accepts handled" not in answer.body
    # The site named like the status path is the site: its backend answers.
    site_answer = fetch(edge.nginx, "rpcc-status.example.com", path)
    assert (site_answer.status, site_answer.body) == (200, "backend")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((NGINX_ADDRESS, port), timeout=10).close()
    # Only the loopback answers, to the control plane through SSH.
    assert read_proxy_status(row(admin, edge.id)).requests_total > 0


def test_a_node_without_the_status_listener_says_to_deploy_its_pool(app, admin, sshd):
    """An operator's nginx before its first deployment: nothing of ours listens."""
    bare = NginxNode(address=BARE_ADDRESS)
    bare.write_main_conf("# the managed directory is not loaded yet")
    bare.start()
    try:
        node = register(admin, bare, "bare-status", sshd.port, sshd.client_key_text)
        with pytest.raises(ProxyStatusUnavailable) as refused:
            read_proxy_status(row(admin, node.id))
        message = refused.value.message
        assert f"127.0.0.1:{bare.status_port} on node bare-status" in message
        assert "the status listener does not answer on the node: deploy the pool once" in message
    finally:
        ssh.reset(app)
        bare.stop()
        bare.remove()


def test_a_status_port_where_another_program_answers_is_named(app, admin, edge, backend):
    """Something else on the status port is not taken for the proxy's counters."""
    nodes.update_node(admin, edge.id, {"status_port": backend.port})
    with pytest.raises(ProxyStatusUnavailable) as refused:
        read_proxy_status(row(admin, edge.id))
    assert refused.value.message == (
        f"127.0.0.1:{backend.port} on node edge-status answered something other than the "
        "proxy's counters (not an nginx stub_status answer): is another program using that "
        "port?")


# --- Caddy -----------------------------------------------------------------------------

@pytest.fixture()
def caddy(app, admin, sshd, tmp_path: Path) -> Iterator[tuple[CaddyNode, int]]:
    node = CaddyNode(tmp_path, listen_address=CADDY_ADDRESS)
    node.apply([])
    try:
        yield node, register_caddy(admin, node, "caddy-status", sshd.port,
                                   sshd.client_key_text)
    finally:
        ssh.reset(app)
        node.stop()


def test_caddy_counts_a_request_in_flight_and_every_request_served(admin, alice, caddy,
                                                                   backend):
    node, node_id = caddy
    deploy_site(alice, "shop.example.com", backend)
    row_ = row(admin, node_id)
    with HeldRequest(backend, CADDY_ADDRESS, node.spec.http_port, "shop.example.com"):
        assert read_proxy_status(row_).active_connections >= 1
    before = read_proxy_status(row_)
    for _ in range(REQUESTS):
        assert get(CADDY_ADDRESS, node.spec.http_port, "shop.example.com") == (200, "backend")
    after = read_proxy_status(row_)
    # The admin endpoint's own requests are not the sites'.
    assert after.requests_total - before.requests_total == REQUESTS
    assert after.active_connections == 0


def test_caddys_metrics_are_not_served_on_its_public_listener(admin, alice, caddy, backend):
    node, _ = caddy
    deploy_site(alice, "shop.example.com", backend)
    admin_endpoint = node.admin
    for host in ("127.0.0.1", admin_endpoint, "localhost", "shop.example.com", "unknown.test"):
        status, body = get(CADDY_ADDRESS, node.spec.http_port, host, "/metrics")
        assert "caddy_http_requests_total" not in body and "go_goroutines" not in body
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((CADDY_ADDRESS, int(admin_endpoint.rsplit(":", 1)[1])),
                                 timeout=10).close()


def test_a_caddy_node_whose_admin_endpoint_is_elsewhere_says_where_to_name_it(
        app, admin, caddy):
    _, node_id = caddy
    elsewhere = free_port()
    nodes.update_node(admin, node_id, {
        "reload_command": f"caddy reload --config /etc/caddy/Caddyfile --adapter caddyfile "
                          f"--address 127.0.0.1:{elsewhere}"})
    with pytest.raises(ProxyStatusUnavailable) as refused:
        read_proxy_status(row(admin, node_id))
    assert f"Nothing answers on 127.0.0.1:{elsewhere} on node caddy-status" in \
        refused.value.message
    assert "--address in its reload command" in refused.value.message


def test_the_metrics_job_stores_the_proxys_connections_and_request_rate(app, admin, alice,
                                                                         edge, backend):
    """A node without Glances still has its proxy's figures: the first sweep stores
    the connections (no rate yet: nothing to measure it from), the next one the rate
    of the requests served in between."""
    deploy_site(alice, "busy.example.com", backend)
    monitoring.poll_node_metrics()
    for _ in range(REQUESTS):
        assert edge.get("busy.example.com").status == 200
    monitoring.poll_node_metrics()
    samples = list(db.session.scalars(select(NodeMetric).where(NodeMetric.node_id == edge.id)
                                      .order_by(NodeMetric.id)))
    assert len(samples) == 2
    first, second = samples
    assert first.connections is not None and first.requests_per_second is None
    assert second.connections is not None and second.requests_per_second > 0
    assert second.cpu_percent is None  # no Glances on this node
    assert "Glances" in row(admin, edge.id).metrics_error
