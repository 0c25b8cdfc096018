"""A real authoritative DNS server on loopback: Knot DNS accepting RFC 2136 updates.

:class:`KnotServer` runs ``knotd -c CONF`` on 127.0.0.1 and a free port, serving
fresh copies of small zones (Knot rewrites its zone files after each update, so
every start writes them anew).  Updates are allowed for one TSIG key made with
``keymgr -t``.  :meth:`KnotServer.txt` asks it directly, as a resolver would,
:meth:`KnotServer.update` changes a zone's records, and
:meth:`KnotServer.provider_data` gives the fields of a DNS provider for one of its
zones.  Stopped by PID; its temp directory is removed.

:class:`HeldRelay` is a resolver address in front of it that holds the queries it
gets until the test lets them through: a DNS lookup that is still running, for as
long as a test needs one.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsigkeyring
import dns.update
import pytest

from tests.processes import free_port, require_binary, start, stop

ADDRESS = "127.0.0.1"
KEY_NAME = "acme-key"
START_TIMEOUT = 10.0

_ZONE = """\
$ORIGIN {zone}.
$TTL 300
@    SOA ns1.{zone}. hostmaster.{zone}. 1 3600 900 604800 300
@    NS  ns1.{zone}.
ns1  A   {address}
"""

_CONFIG = """\
server:
    rundir: "{root}"
    listen: {address}@{port}
log:
  - target: stderr
    any: info
database:
    storage: "{root}/db"
control:
    listen: "{root}/knot.sock"
key:
  - id: {key_name}
    algorithm: {algorithm}
    secret: {secret}
acl:
  - id: acme-update
    key: {key_name}
    action: update
template:
  - id: default
    storage: "{root}/zones"
    file: "%s.zone"
zone:
{zones}
"""


def make_tsig_key(name: str, algorithm: str = "hmac-sha256") -> str:
    """A fresh secret from Knot's own ``keymgr -t`` (its first line reads
    ``# ALGORITHM:NAME:SECRET``)."""
    out = subprocess.run([require_binary("keymgr"), "-t", name, algorithm], check=True,
                         capture_output=True, text=True, timeout=30).stdout
    header = out.splitlines()[0]
    return header.rsplit(":", 1)[1]


class KnotServer:
    """knotd serving ``zones`` on 127.0.0.1; updates need the TSIG key ``key_name``."""

    def __init__(self, zones: Sequence[str] = ("example.com",), *,
                 key_name: str = KEY_NAME, algorithm: str = "hmac-sha256") -> None:
        binary = require_binary("knotd")
        self.zones = tuple(zones)
        self.key_name, self.algorithm = key_name, algorithm
        self.secret = make_tsig_key(key_name, algorithm)
        self.host, self.port = ADDRESS, free_port(ADDRESS)
        self.root = Path(tempfile.mkdtemp(prefix="rpcc-knot-"))
        (self.root / "zones").mkdir()
        (self.root / "db").mkdir()
        for zone in self.zones:
            (self.root / "zones" / f"{zone}.zone").write_text(
                _ZONE.format(zone=zone, address=ADDRESS))
        config = _CONFIG.format(
            root=self.root, address=ADDRESS, port=self.port, key_name=key_name,
            algorithm=algorithm, secret=self.secret,
            zones="".join(f"  - domain: {zone}\n    acl: acme-update\n" for zone in self.zones))
        config_path = self.root / "knot.conf"
        config_path.write_text(config)
        self.log_path = self.root / "knotd.log"
        try:
            self.process = start([binary, "-c", str(config_path)], ready=self._zones_loaded,
                                 log=self.log_path, timeout=START_TIMEOUT)
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    def _zones_loaded(self, _process: subprocess.Popen[bytes]) -> bool:
        """Ready once every zone answers its SOA (listening is not enough: zones load
        after)."""
        return all(self._soa_rcode(zone) == dns.rcode.NOERROR for zone in self.zones)

    def _soa_rcode(self, zone: str) -> int:
        try:
            response = dns.query.tcp(dns.message.make_query(zone, dns.rdatatype.SOA),
                                     self.host, port=self.port, timeout=2)
        except (OSError, EOFError, dns.exception.DNSException):
            # Not ready yet: a query timed out, or knotd closed the connection.
            return dns.rcode.SERVFAIL
        return response.rcode()

    @property
    def address(self) -> str:
        """``address:port``, as Pebble's ``-dnsserver`` takes it."""
        return f"{self.host}:{self.port}"

    def txt(self, name: str) -> set[str]:
        """The TXT values Knot serves at ``name`` now (a real query over UDP, as
        an ACME validator makes it)."""
        response = dns.query.udp(dns.message.make_query(name, dns.rdatatype.TXT),
                                 self.host, port=self.port, timeout=2)
        return {b"".join(rdata.strings).decode()
                for rrset in response.answer if rrset.rdtype == dns.rdatatype.TXT
                for rdata in rrset}

    def update(self, zone: str, *, replace: Sequence[tuple[str, str, str]] = (),
               add: Sequence[tuple[str, str, str]] = (),
               delete: Sequence[tuple[str, str, str]] = ()) -> None:
        """One RFC 2136 update of ``zone`` signed with the server's key, as an
        operator's DNS tooling sends it: records ``(name, type, value)`` (names
        relative to the zone, ``@`` for its apex) replaced, added, then deleted."""
        message = dns.update.UpdateMessage(
            zone, keyring=dns.tsigkeyring.from_text({self.key_name: self.secret}),
            keyname=self.key_name, keyalgorithm=self.algorithm)
        for name, rdtype, value in replace:
            message.replace(name, 300, rdtype, value)
        for name, rdtype, value in add:
            message.add(name, 300, rdtype, value)
        for name, rdtype, value in delete:
            message.delete(name, rdtype, value)
        response = dns.query.tcp(message, self.host, port=self.port, timeout=5)
        if response.rcode() != dns.rcode.NOERROR:
            raise AssertionError(f"Knot refused the update of {zone}: "
                                 f"{dns.rcode.to_text(response.rcode())}\n{self.log()}")

    def provider_data(self, zone: str, **extra: Any) -> dict[str, Any]:
        """Fields for ``dns_providers.create_provider`` that reach this server."""
        data = {"name": zone.replace(".", "-"), "zone": zone, "server": self.host,
                "port": self.port, "tsig_name": self.key_name,
                "tsig_algorithm": self.algorithm, "tsig_secret": self.secret}
        data.update(extra)
        return data

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop(self.process)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def knot() -> Iterator[KnotServer]:
    """Knot serving example.com, dev.example.com and example.net for the module."""
    server = KnotServer(("example.com", "dev.example.com", "example.net"))
    yield server
    server.stop()


class HeldRelay:
    """A UDP address on 127.0.0.1 that relays DNS queries to ``upstream`` (a Knot's
    ``host, port``) and back, once :meth:`release` is called; until then every query
    waits there.  ``queries`` counts the queries it got."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.queries = 0
        self.asked = threading.Event()
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind((ADDRESS, 0))
        self._socket.settimeout(0.2)
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._receiving = threading.Thread(target=self._receive, daemon=True)
        self._receiving.start()

    @property
    def address(self) -> str:
        """``address:port``, as the resolvers setting takes it."""
        host, port = self._socket.getsockname()[:2]
        return f"{host}:{port}"

    def release(self) -> None:
        self._released.set()

    def _receive(self) -> None:
        while not self._closing.is_set():
            try:
                query, client = self._socket.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.queries += 1
            self.asked.set()
            relay = threading.Thread(target=self._relay, args=(query, client), daemon=True)
            self._threads.append(relay)
            relay.start()

    def _relay(self, query: bytes, client: tuple[str, int]) -> None:
        while not self._released.wait(0.2):
            if self._closing.is_set():
                return
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as upstream:
            upstream.settimeout(10)
            upstream.sendto(query, self.upstream)
            try:
                answer = upstream.recv(65535)
            except TimeoutError:
                return
        try:
            self._socket.sendto(answer, client)
        except OSError:
            pass  # closed meanwhile

    def stop(self) -> None:
        self._closing.set()
        self._receiving.join()
        for relay in self._threads:
            relay.join()
        self._socket.close()
