"""How busy a node's proxy is: its active connections and the requests it served,
from the proxy's own counters (nginx's ``stub_status``, Caddy's metrics).

The counters are served on the node's loopback only (see each engine's
``status_endpoint``): they are read through a channel forwarded over the node's
pooled SSH connection, with one small HTTP/1.1 request, so no port is opened to the
network for them and no credentials are needed beyond the node's SSH access.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass
from typing import Any

from flask import Flask

from app.connector import ConnectorError, PortClosed, SSHTarget
from app.engines import get_engine
from app.engines.base import NodeSpec, ProxyCounters, StatusEndpoint
from app.errors import ServiceError
from app.extensions import ssh
from app.models import Node
from app.services import explain
from app.services.deployments import ssh_target
from app.services.rendering import node_spec

logger = logging.getLogger(__name__)

# nginx's answer is about 100 bytes; Caddy's metrics some tens of KB, growing with
# its servers.  More is not a status answer, and is not read into memory.
MAX_ANSWER = 1 << 20
# Seconds for opening the channel and for each read on it.
READ_TIMEOUT = 10.0
_RECV_SIZE = 64 * 1024


@dataclass(frozen=True)
class ProxyStatus:
    """The proxy's counters at ``at`` (seconds since the epoch, when they were read)."""

    active_connections: int
    requests_total: int
    at: float


class ProxyStatusUnavailable(ServiceError):
    """The proxy's counters could not be read; the message says why and what to do,
    for administrators (it names the node)."""

    code = "proxy_status_unavailable"
    status = 502


class _BadAnswer(Exception):
    """What answered on the status port is not the proxy's status."""


@dataclass(frozen=True)
class StatusSource:
    """What reading one node's counters needs, taken from its row beforehand, so that
    the metrics sweep's threads never touch the database session."""

    node_id: int
    name: str
    engine: str
    spec: NodeSpec
    target: SSHTarget


def status_source(node: Node) -> StatusSource:
    return StatusSource(node.id, node.name, node.proxy_type.value, node_spec(node),
                        ssh_target(node))


def read_proxy_status(node: Node | StatusSource, app: Flask | None = None, *,
                      timeout: float = READ_TIMEOUT) -> ProxyStatus:
    """Read the counters of the node's proxy through its SSH connection.

    :param app: the application whose SSH connection pool to use (the current one
        by default; the scheduler's jobs pass theirs).
    :param timeout: seconds for opening the channel and for each read on it.
    :raises ProxyStatusUnavailable: when the engine's counters are not read, nothing
        answers where they are served (nginx: the pool was not deployed since the
        status listener came), something else answers there, or the node cannot be
        reached.
    """
    source = node if isinstance(node, StatusSource) else status_source(node)
    engine = get_engine(source.engine)
    try:
        endpoint = engine.status_endpoint(source.spec)
    except ValueError as exc:
        raise ProxyStatusUnavailable(str(exc)) from None
    if endpoint is None:
        raise ProxyStatusUnavailable(f"The control plane does not read the connections and "
                                     f"requests of {engine.name} nodes such as {source.name}.")
    if not _is_loopback(endpoint.host):
        raise ProxyStatusUnavailable(
            f"Node {source.name}: the proxy's counters are read on the node's loopback "
            f"only, and its reload command names {endpoint.host_header}; move the endpoint "
            "to 127.0.0.1.")
    where = f"{endpoint.host_header} on node {source.name}"
    try:
        answer = ssh.pool(app).tunnel(source.target, endpoint.host, endpoint.port,
                                      lambda channel: _exchange(channel, endpoint),
                                      timeout=timeout)
        counters = _counters(answer, endpoint)
    except PortClosed:
        logger.info("node %s: nothing answers on its status port %s", source.node_id,
                    endpoint.port)
        raise ProxyStatusUnavailable(f"Nothing answers on {where}: {endpoint.missing}.") from None
    except _BadAnswer as exc:
        raise ProxyStatusUnavailable(
            f"{where} answered something other than the proxy's counters ({exc}): is "
            "another program using that port?") from None
    except ConnectorError as exc:
        raise ProxyStatusUnavailable(
            explain.node_failure(str(exc), source.name, admin=True).summary) from None
    except (OSError, EOFError) as exc:
        raise ProxyStatusUnavailable(f"The channel to {where} broke while reading the "
                                     f"proxy's counters ({exc}); the next poll tries "
                                     "again.") from None
    return ProxyStatus(active_connections=counters.active_connections,
                       requests_total=counters.requests_total, at=time.time())


def requests_per_second(previous: ProxyStatus | None,
                        current: ProxyStatus) -> float | None:
    """The request rate between two reads of one node; None without a previous read,
    or when the counter went back (the proxy restarted since), which gives no rate."""
    if previous is None:
        return None
    elapsed = current.at - previous.at
    served = current.requests_total - previous.requests_total
    if elapsed <= 0 or served < 0:
        return None
    return served / elapsed


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _exchange(channel: Any, endpoint: StatusEndpoint) -> bytes:
    """Send one GET on the forwarded channel (socket-like) and read the answer to its
    end, the server closing the connection as asked.

    :raises _BadAnswer: past :data:`MAX_ANSWER` bytes.
    """
    channel.sendall((f"GET {endpoint.path} HTTP/1.1\r\nHost: {endpoint.host_header}\r\n"
                     "User-Agent: rpcc-proxy-status\r\nAccept: */*\r\n"
                     "Connection: close\r\n\r\n").encode())
    answer = bytearray()
    while chunk := channel.recv(_RECV_SIZE):
        answer += chunk
        if len(answer) > MAX_ANSWER:
            raise _BadAnswer(f"more than {MAX_ANSWER} bytes")
    return bytes(answer)


def _counters(answer: bytes, endpoint: StatusEndpoint) -> ProxyCounters:
    """:raises _BadAnswer: unless ``answer`` is a 200 the endpoint's parser reads."""
    head, separator, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ")
    if not separator or len(status) < 2 or not status[0].startswith("HTTP/1."):
        raise _BadAnswer("not an HTTP answer")
    if status[1] != "200":
        raise _BadAnswer(f"HTTP status {status[1][:3]}")
    headers = {name.strip().lower(): value.strip()
               for name, _, value in (line.partition(":") for line in lines[1:])}
    try:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = _unchunked(body)
        return endpoint.parse(body.decode("utf-8"))
    except ValueError as exc:
        raise _BadAnswer(str(exc)[:80]) from None


def _unchunked(data: bytes) -> bytes:
    """The body of an answer in chunked transfer coding (Caddy's, when it is long).

    :raises ValueError: when the answer ends before its last chunk.
    """
    body = bytearray()
    rest = data
    while True:
        size_line, separator, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if not separator or len(rest) < size + 2:
            raise ValueError("the answer ended inside a chunk")
        if size == 0:
            return bytes(body)
        body += rest[:size]
        rest = rest[size + 2:]
