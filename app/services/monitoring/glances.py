"""Reading a node's figures from the Glances REST API, versions 3 and 4.

Glances listens on the node's loopback by default (port ``GLANCES_PORT``), so the
usual way in is a channel forwarded over the node's pooled SSH connection: no port is
opened to the network and no credential is added.  A node's ``glances_url`` changes
where:

* ``ssh://127.0.0.1:61209`` (any loopback address and port): still through SSH, to
  that address and port as the node sees it;
* ``http://10.0.0.5:61208`` or ``https://host/prefix``: directly over HTTP(S), for
  a Glances that is reachable from the control plane (no redirects are followed, no
  proxy from the environment is used, and an https server's certificate is verified
  against the system's roots).

Both ways use one small client: requests are written by hand on a socket-like object
(a forwarded channel, or a TCP or TLS socket) and answers read with
``http.client.HTTPResponse`` (Content-Length, chunked, or up to the end; at most
``MAX_ANSWER`` bytes), one connection reused for a read's requests as long as the
server keeps it open (Glances 4 does; Glances 3 answers HTTP/1.0 and closes).  Every
wait, connecting and each read of the answer alike, lasts only until the node's
deadline: a node that trickles its answer a byte at a time cannot hold a thread of
the sweep past its turn.

The two API versions differ in their paths (``/api/3``, ``/api/4``) and in the
network plugin (v3 counts bytes since its last refresh in ``rx``/``tx``, v4 gives
``bytes_recv_rate_per_sec``, or only ``bytes_recv`` right after it started);
everything else this module reads has the same shape.  Which one a node speaks is
found by asking, the version it spoke last time first.
"""

from __future__ import annotations

import functools
import http.client
import io
import json
import math
import re
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from app.connector import (
    CommandTimeout,
    ConnectorError,
    HostKeyChanged,
    PortClosed,
    SSHConnectionPool,
    SSHTarget,
)

VERSIONS = ("4", "3")
#: The plugins a sample is made of, in the order they are asked for.
PLUGINS = ("cpu", "mem", "memswap", "load", "fs", "network", "uptime")
#: An answer larger than this is not Glances (a file system list is a few KiB).
MAX_ANSWER = 1 << 20
#: File systems kept per sample: enough for any real node, bounded for the table.
MAX_FILESYSTEMS = 64
#: Figures at or above this are refused (a 64-bit column holds less than 2**63).
LARGEST = 2.0**62
_UPTIME = re.compile(r"(?:(\d{1,9}) days?, )?(\d{1,2}):(\d\d):(\d\d)")
_LOOPBACK_INTERFACE = re.compile(r"lo\d*")
_USER_AGENT = "rpcc-metrics/1"


class GlancesError(Exception):
    """Glances could not be read; the message says why, in words an administrator
    can act on.

    :param absent: nothing speaking Glances is there (as opposed to a failure on the
        way, such as a timeout or SSH refusing the connection).
    """

    def __init__(self, message: str, *, absent: bool = False) -> None:
        super().__init__(message)
        self.absent = absent


@dataclass(frozen=True)
class Sample:
    """One reading of a node; each field is a ``NodeMetric`` column, ``None`` when
    Glances did not report it."""

    cpu_percent: float | None
    mem_percent: float | None
    swap_percent: float | None
    load1: float | None
    load5: float | None
    load15: float | None
    disk_percent: float | None
    filesystems: list[dict[str, Any]]
    net_rx_bps: float | None
    net_tx_bps: float | None
    uptime_seconds: int | None

    def columns(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


class Transport(Protocol):
    """How a node's Glances is reached: ``get`` asks for ``paths`` in order and
    returns the answers it got, stopping after the first answer other than 200 when
    ``stop_early``.  Failures on the way raise :class:`GlancesError`."""

    where: str

    def get(self, paths: Sequence[str], *, stop_early: bool) -> dict[str, Answer]: ...


# --------------------------------------------------------------------------- #
# Where Glances is                                                            #
# --------------------------------------------------------------------------- #

@dataclass(frozen=True)
class Endpoint:
    """``tunnel``: ``host:port`` as the node sees it, through SSH; ``http``: the
    base URL, read directly."""

    kind: str
    host: str = ""
    port: int = 0
    base_url: str = ""


def endpoint(glances_url: str | None, default_port: int) -> Endpoint:
    """Where a node's Glances is, from its ``glances_url`` (already validated by
    ``nodes.validate_glances_url``)."""
    if not glances_url:
        return Endpoint("tunnel", "127.0.0.1", default_port)
    parts = urlsplit(glances_url)
    if parts.scheme == "ssh":
        return Endpoint("tunnel", parts.hostname or "127.0.0.1", parts.port or default_port)
    return Endpoint("http", base_url=glances_url.rstrip("/"))


# --------------------------------------------------------------------------- #
# Transports                                                                  #
# --------------------------------------------------------------------------- #

def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the node's time is up")
    return left


class _Connection:
    """A connection (forwarded channel or socket) as ``http.client.HTTPResponse``
    reads it, where every read waits only until the node's deadline: the answer comes
    from the node, and one that trickles a byte at a time must not hold a thread past
    it."""

    def __init__(self, conn: Any, deadline: float) -> None:
        self.conn, self.deadline = conn, deadline

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self.conn, self.deadline))


class _DeadlineReader(io.RawIOBase):
    def __init__(self, conn: Any, deadline: float) -> None:
        super().__init__()
        self.conn, self.deadline = conn, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self.conn.settimeout(_remaining(self.deadline))
        data = self.conn.recv(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _not_http(where: str, exc: Exception) -> GlancesError:
    return GlancesError(f"{where} does not answer HTTP ({type(exc).__name__})", absent=True)


def _exchange(conn: Any, deadline: float, host_header: str, prefix: str, where: str,
              pending: list[str], answers: dict[str, Answer], stop_early: bool) -> None:
    """Ask for the pending paths one after the other on this connection until the
    server closes it (the caller then opens another for the rest).

    A connection that already gave an answer and is found closed at the next request
    was closed by the server between two requests (an idle timeout, or a server that
    closes without saying so): the caller asks again on a new one.
    """
    reused = False
    while pending:
        path = pending[0]
        try:
            conn.settimeout(_remaining(deadline))
            conn.sendall((f"GET {prefix}{path} HTTP/1.1\r\nHost: {host_header}\r\n"
                          f"Accept: application/json\r\nUser-Agent: {_USER_AGENT}\r\n"
                          "\r\n").encode("ascii"))
            response = http.client.HTTPResponse(
                _Connection(conn, deadline), method="GET")  # type: ignore[arg-type]
            response.begin()
        except ConnectionError as exc:
            if reused:
                return
            if isinstance(exc, http.client.RemoteDisconnected):
                raise _not_http(where, exc) from None
            raise
        except (http.client.HTTPException, ValueError) as exc:
            raise _not_http(where, exc) from None
        try:
            body = response.read(MAX_ANSWER + 1)
        except (http.client.HTTPException, ValueError) as exc:
            raise _not_http(where, exc) from None
        _check_size(body, where)
        answers[path] = Answer(response.status, body)
        pending.pop(0)
        reused = True
        if stop_early and response.status != 200:
            pending.clear()
        if response.will_close:
            return


class TunnelTransport:
    """HTTP/1.1 over channels forwarded by the node's pooled SSH connection."""

    def __init__(self, pool: SSHConnectionPool, target: SSHTarget, host: str, port: int,
                 deadline: float) -> None:
        self.pool, self.target = pool, target
        self.host, self.port, self.deadline = host, port, deadline
        shown = f"[{host}]" if ":" in host else host
        self.host_header = f"{shown}:{port}"
        self.where = f"{self.host_header} on the node (through SSH)"

    def get(self, paths: Sequence[str], *, stop_early: bool) -> dict[str, Answer]:
        answers: dict[str, Answer] = {}
        pending = list(paths)
        while pending:
            try:
                self.pool.tunnel(self.target, self.host, self.port,
                                 lambda channel: _exchange(
                                     channel, self.deadline, self.host_header, "",
                                     self.where, pending, answers, stop_early),
                                 timeout=_remaining(self.deadline))
            except PortClosed:
                raise GlancesError(f"no Glances: nothing listens on {self.where}",
                                   absent=True) from None
            except (CommandTimeout, TimeoutError):
                raise GlancesError(f"Glances on {self.where} did not answer in time") from None
            except HostKeyChanged:
                raise GlancesError("the node presents a new SSH host key: accept it on the "
                                   "node's page if the change is expected") from None
            except ConnectorError as exc:
                raise GlancesError(f"SSH: {exc}") from None
            except OSError as exc:
                raise GlancesError(f"the channel to {self.where} broke: {exc}") from None
        return answers


@functools.cache
def _system_roots() -> ssl.SSLContext:
    """The default TLS client context (the system's roots, host names checked),
    made once: loading the roots costs more than a read of a node."""
    return ssl.create_default_context()


class HttpTransport:
    """Glances at an HTTP(S) URL, read with the tunnel's client over a TCP (or TLS)
    socket: no redirects followed, no proxy from the environment, and the server's
    certificate verified against ``context`` (the system's roots by default)."""

    def __init__(self, base_url: str, deadline: float,
                 context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(base_url)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.tls else 80)
        self.host_header = parts.netloc
        self.prefix = parts.path.rstrip("/")
        self.deadline = deadline
        self.context = context
        self.where = base_url

    def get(self, paths: Sequence[str], *, stop_early: bool) -> dict[str, Answer]:
        answers: dict[str, Answer] = {}
        pending = list(paths)
        try:
            while pending:
                with self._connect() as conn:
                    _exchange(conn, self.deadline, self.host_header, self.prefix, self.where,
                              pending, answers, stop_early)
        except TimeoutError:
            raise GlancesError(f"Glances at {self.where} did not answer in time") from None
        except ssl.SSLError as exc:
            reason = getattr(exc, "verify_message", None) or exc.reason or str(exc)
            raise GlancesError(f"TLS with {self.where} failed: {reason}") from None
        except OSError as exc:
            raise GlancesError(f"no Glances: {self.where} refuses or drops the connection "
                               f"({exc.strerror or exc})", absent=True) from None
        return answers

    def _connect(self) -> socket.socket:
        conn = socket.create_connection((self.host, self.port),
                                        timeout=_remaining(self.deadline))
        if not self.tls:
            return conn
        try:
            # The handshake is one wait bounded by the time left.
            conn.settimeout(_remaining(self.deadline))
            return (self.context or _system_roots()).wrap_socket(
                conn, server_hostname=self.host)
        except BaseException:
            conn.close()
            raise


def _check_size(body: bytes, where: str) -> None:
    if len(body) > MAX_ANSWER:
        raise GlancesError(f"{where} answered more than {MAX_ANSWER // 1024} KiB: "
                           "this is not Glances", absent=True)


# --------------------------------------------------------------------------- #
# Reading                                                                     #
# --------------------------------------------------------------------------- #

def read(transport: Transport, remembered: str | None) -> tuple[str, Sample]:
    """The node's figures and the API version that gave them.

    The version the node spoke last time is asked first; only when its first plugin
    answers 404 is the other one tried, so a node that was upgraded costs one request
    once.

    :raises GlancesError: nothing speaks Glances there, or it answered wrongly.
    """
    order = [remembered] if remembered in VERSIONS else []
    order += [v for v in VERSIONS if v not in order]
    for version in order:
        paths = [f"/api/{version}/{plugin}" for plugin in PLUGINS]
        answers = transport.get(paths, stop_early=True)
        first = answers[paths[0]]
        if first.status == 404:
            continue
        data = {}
        for plugin, path in zip(PLUGINS, paths, strict=True):
            answer = answers.get(path)
            if answer is None or answer.status != 200:
                status = answer.status if answer else first.status
                raise GlancesError(f"Glances at {transport.where} answered HTTP {status} "
                                   f"for {plugin}")
            try:
                data[plugin] = json.loads(answer.body)
            except ValueError:
                raise GlancesError(f"Glances at {transport.where} answered something other "
                                   f"than JSON for {plugin}") from None
        return version, parse(version, data)
    raise GlancesError(f"something answers at {transport.where} but not the Glances REST "
                       "API (version 3 or 4)", absent=True)


def parse(version: str, data: dict[str, Any]) -> Sample:
    """A sample from the plugins' answers (``{"cpu": {...}, "fs": [...], ...}``).

    :raises GlancesError: an answer does not have the shape of its plugin.
    """
    try:
        cpu, mem, swap, load = (_mapping(data, name) for name in ("cpu", "mem", "memswap",
                                                                   "load"))
        filesystems = _filesystems(_sequence(data, "fs"))
        rx, tx = _throughput(version, _sequence(data, "network"))
        return Sample(
            cpu_percent=_number(cpu.get("total")),
            mem_percent=_number(mem.get("percent")),
            # A node without swap reports 0 of 0 bytes: nothing to chart.
            swap_percent=_number(swap.get("percent")) if swap.get("total") else None,
            load1=_number(load.get("min1")),
            load5=_number(load.get("min5")),
            load15=_number(load.get("min15")),
            disk_percent=max((fs["percent"] for fs in filesystems
                              if fs["percent"] is not None), default=None),
            filesystems=filesystems[:MAX_FILESYSTEMS],
            net_rx_bps=rx,
            net_tx_bps=tx,
            uptime_seconds=parse_uptime(data.get("uptime")),
        )
    except (TypeError, AttributeError) as exc:
        raise GlancesError(f"Glances answered an unexpected shape ({exc})") from None


def parse_uptime(value: Any) -> int | None:
    """Seconds from Glances' ``"12 days, 3:04:05"`` (or ``"3:04:05"``)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = _number(value)
        return int(number) if number is not None else None
    match = _UPTIME.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        return None
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    return total if total < LARGEST else None


def _mapping(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name)
    if not isinstance(value, dict):
        raise TypeError(f"{name} is not an object")
    return value


def _sequence(data: dict[str, Any], name: str) -> list[dict[str, Any]]:
    value = data.get(name)
    if not isinstance(value, list):
        raise TypeError(f"{name} is not a list")
    return [item for item in value if isinstance(item, dict)]


def _number(value: Any) -> float | None:
    """A figure as Glances sent it, if it is one a database column can hold: a node
    answering NaN, infinities or 400-digit numbers loses that figure, and never
    breaks the sweep's one insert for every node."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) and abs(number) < LARGEST else None


def _filesystems(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for item in items:
        mount = item.get("mnt_point")
        if not isinstance(mount, str):
            continue
        size, used = _number(item.get("size")), _number(item.get("used"))
        found.append({"mount": mount[:200], "percent": _number(item.get("percent")),
                      "used": int(used) if used is not None else None,
                      "size": int(size) if size is not None else None})
    return sorted(found, key=lambda fs: fs["mount"])


def _rate(item: dict[str, Any], rate_key: str | None, count_key: str) -> float:
    """Bytes per second of one interface: Glances' own rate (``rate_key``: v4, which
    leaves it out until its second refresh), else the bytes it counted since its
    previous refresh over the time since then (v3)."""
    rate = _number(item.get(rate_key)) if rate_key else None
    if rate is not None:
        return rate
    count, elapsed = _number(item.get(count_key)), _number(item.get("time_since_update"))
    if count is None or not elapsed or elapsed <= 0:
        return 0.0
    return count / elapsed


def _throughput(version: str, interfaces: list[dict[str, Any]]) -> tuple[float, float]:
    """Received and sent bytes per second over every interface but loopback (traffic
    a node sends itself is not what its network carries)."""
    keys: tuple[tuple[str | None, str], tuple[str | None, str]] = (
        (("bytes_recv_rate_per_sec", "bytes_recv"), ("bytes_sent_rate_per_sec", "bytes_sent"))
        if version == "4" else ((None, "rx"), (None, "tx")))
    rx = tx = 0.0
    for item in interfaces:
        name = item.get("interface_name")
        if not isinstance(name, str) or _LOOPBACK_INTERFACE.fullmatch(name) \
                or item.get("is_up") is False:
            continue
        rx += _rate(item, *keys[0])
        tx += _rate(item, *keys[1])
    return round(rx, 1), round(tx, 1)
