"""Reading a node's figures from the Glances REST API, versions 3 and 4.

Glances listens on the node's loopback by default (port ``GLANCES_PORT``), so the
usual way in is a channel forwarded over the node's pooled SSH connection: no port is
opened to the network and no credential is added.  A node's ``glances_url`` changes
where:

* ``ssh://127.0.0.1:61209`` (any loopback address and port): still through SSH, to
  that address and port as the node sees it;
* ``http://10.0.0.5:61208`` or ``https://host/prefix``: directly over HTTP(S), for
  a Glances that is reachable from the control plane (no redirects are followed and
  no proxy from the environment is used).

Over a forwarded channel there is no HTTP library, only a socket-like object:
requests are written by hand and answers read with ``http.client.HTTPResponse``
(Content-Length, chunked, or up to the end), one channel reused as long as the server
keeps the connection open (Glances 4 does; Glances 3 answers HTTP/1.0 and closes).

The two API versions differ in their paths (``/api/3``, ``/api/4``) and in the
network plugin (v3 counts bytes since its last refresh in ``rx``/``tx``, v4 gives
``bytes_recv_rate_per_sec``, or only ``bytes_recv`` right after it started);
everything else this module reads has the same shape.  Which one a node speaks is
found by asking, the version it spoke last time first.
"""

from __future__ import annotations

import http.client
import io
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests

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
        raise GlancesError("Glances did not answer in time")
    return left


class _Channel:
    """A forwarded channel as ``http.client.HTTPResponse`` reads it, where every read
    waits only until the node's deadline: the answer comes from the node, and one
    that trickles a byte at a time must not hold a thread past it."""

    def __init__(self, channel: Any, deadline: float) -> None:
        self.channel, self.deadline = channel, deadline

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_ChannelReader(self.channel, self.deadline))


class _ChannelReader(io.RawIOBase):
    def __init__(self, channel: Any, deadline: float) -> None:
        super().__init__()
        self.channel, self.deadline = channel, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the node's time is up")
        self.channel.settimeout(left)
        data = self.channel.recv(len(buffer))
        buffer[:len(data)] = data
        return len(data)


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
                                 lambda channel: self._exchange(channel, pending, answers,
                                                                stop_early),
                                 timeout=_remaining(self.deadline))
            except PortClosed:
                raise GlancesError(f"no Glances: nothing listens on {self.where}",
                                   absent=True) from None
            except CommandTimeout:
                raise GlancesError(f"Glances on {self.where} did not answer in time") from None
            except HostKeyChanged:
                raise GlancesError("the node presents a new SSH host key: accept it on the "
                                   "node's page if the change is expected") from None
            except ConnectorError as exc:
                raise GlancesError(f"SSH: {exc}") from None
            except OSError as exc:
                raise GlancesError(f"the channel to {self.where} broke: {exc}") from None
        return answers

    def _exchange(self, channel: Any, pending: list[str], answers: dict[str, Answer],
                  stop_early: bool) -> None:
        """Ask for the pending paths one after the other on this channel until the
        server closes it (the caller then opens another for the rest)."""
        while pending:
            path = pending[0]
            channel.sendall((f"GET {path} HTTP/1.1\r\nHost: {self.host_header}\r\n"
                             f"Accept: application/json\r\nUser-Agent: {_USER_AGENT}\r\n"
                             "\r\n").encode("ascii"))
            response = http.client.HTTPResponse(
                _Channel(channel, self.deadline), method="GET")  # type: ignore[arg-type]
            try:
                response.begin()
                body = response.read(MAX_ANSWER + 1)
            except (http.client.HTTPException, ValueError) as exc:
                raise GlancesError(f"{self.where} does not answer HTTP "
                                   f"({type(exc).__name__})", absent=True) from None
            _check_size(body, self.where)
            answers[path] = Answer(response.status, body)
            pending.pop(0)
            if stop_early and response.status != 200:
                pending.clear()
            if response.will_close:
                return


class HttpTransport:
    """Glances at an HTTP(S) URL: no redirects, no proxies from the environment."""

    def __init__(self, base_url: str, deadline: float,
                 session_factory: Callable[[], requests.Session] = requests.Session) -> None:
        self.base_url, self.deadline = base_url, deadline
        self.session_factory = session_factory
        self.where = base_url

    def get(self, paths: Sequence[str], *, stop_early: bool) -> dict[str, Answer]:
        answers: dict[str, Answer] = {}
        with self.session_factory() as session:
            session.trust_env = False
            for path in paths:
                left = _remaining(self.deadline)
                try:
                    with session.get(self.base_url + path, timeout=(min(left, 5.0), left),
                                     allow_redirects=False, stream=True,
                                     headers={"Accept": "application/json",
                                              "User-Agent": _USER_AGENT}) as response:
                        body = response.raw.read(MAX_ANSWER + 1, decode_content=True)
                        status = response.status_code
                except requests.Timeout:
                    raise GlancesError(f"Glances at {self.where} did not answer in time") \
                        from None
                except requests.exceptions.SSLError as exc:
                    raise GlancesError(f"TLS with {self.where} failed: {_reason(exc)}") \
                        from None
                except requests.ConnectionError as exc:
                    raise GlancesError(f"no Glances: {self.where} refuses or drops the "
                                       f"connection ({_reason(exc)})", absent=True) from None
                except requests.RequestException as exc:
                    raise GlancesError(f"{self.where}: {_reason(exc)}") from None
                _check_size(body, self.where)
                answers[path] = Answer(status, body)
                if stop_early and status != 200:
                    break
        return answers


def _reason(exc: BaseException) -> str:
    """The innermost cause, shortened: requests wraps urllib3's errors, which wrap
    the socket's, and only the last says what happened."""
    for _ in range(5):
        if exc.__context__ is None:
            break
        exc = exc.__context__
    return str(exc)[:160] or type(exc).__name__


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
