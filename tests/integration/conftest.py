"""Components shared by the integration modules: the sshd every node is reached
through, local backends, and (for modules naming their node ``ADDRESSES``) a Pebble
CA with its DNS and nginx nodes that answer HTTP-01 on Pebble's port."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from app.extensions import ssh
from tests.fleet import Backends, FleetNode, register
from tests.nginx_node import NginxNode
from tests.pebble import ChallTestSrv, Pebble, start_nginx_on
from tests.processes import free_port
from tests.sshd import SshServer


@pytest.fixture(scope="module")
def sshd() -> Iterator[SshServer]:
    server = SshServer()
    yield server
    server.stop()


@pytest.fixture()
def backends() -> Iterator[Backends]:
    running = Backends()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def http_port(request: pytest.FixtureRequest) -> int:
    """The port every node of the module serves HTTP on: Pebble validates there."""
    return free_port(request.module.ADDRESSES[0])


@pytest.fixture(scope="module")
def dns(request: pytest.FixtureRequest) -> Iterator[ChallTestSrv]:
    server = ChallTestSrv(default_ipv4=request.module.ADDRESSES[0])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pebble(http_port: int, dns: ChallTestSrv) -> Iterator[Pebble]:
    server = Pebble(http_port=http_port, dns_server=dns.dns_server)
    yield server
    server.stop()


@pytest.fixture()
def fleet(request: pytest.FixtureRequest, app: Any, admin: Any, sshd: SshServer,
          http_port: int) -> Iterator[list[FleetNode]]:
    """One nginx node per address of the module's ``ADDRESSES``, in the default pool.
    Every node is stopped at the end even if stopping another one fails."""
    started: list[NginxNode] = []
    with ExitStack() as teardown:
        teardown.callback(ssh.reset, app)
        for address in request.module.ADDRESSES:
            nginx = start_nginx_on(address, http_port)
            teardown.callback(nginx.remove)
            teardown.callback(nginx.stop)
            started.append(nginx)
        yield [register(admin, nginx, f"edge-{i}", sshd.port, sshd.client_key_text)
               for i, nginx in enumerate(started)]
