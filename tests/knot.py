"""A real authoritative DNS server on loopback: Knot DNS accepting RFC 2136 updates.

:class:`KnotServer` runs ``knotd -c CONF`` on 127.0.0.1 and a free port, serving
fresh copies of small zones (Knot rewrites its zone files after each update, so
every start writes them anew).  Updates are allowed for one TSIG key made with
``keymgr -t``.  :meth:`KnotServer.txt` asks it directly, as a resolver would, and
:meth:`KnotServer.provider_data` gives the fields of a DNS provider for one of its
zones.  Stopped by PID; its temp directory is removed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.components import free_port, require_binary, stop, wait_for_port

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


def _knotd() -> str:
    """knotd lives in /usr/sbin, which is not on every PATH."""
    return "/usr/sbin/knotd" if os.path.exists("/usr/sbin/knotd") else require_binary("knotd")


def make_tsig_key(name: str, algorithm: str = "hmac-sha256") -> str:
    """A fresh secret from Knot's own ``keymgr -t`` (its first line reads
    ``# ALGORITHM:NAME:SECRET``)."""
    binary = "/usr/sbin/keymgr" if os.path.exists("/usr/sbin/keymgr") else require_binary("keymgr")
    out = subprocess.run([binary, "-t", name, algorithm], check=True, capture_output=True,
                         text=True, timeout=30).stdout
    header = out.splitlines()[0]
    return header.rsplit(":", 1)[1]


class KnotServer:
    """knotd serving ``zones`` on 127.0.0.1; updates need the TSIG key ``key_name``."""

    def __init__(self, zones: Sequence[str] = ("example.com",), *,
                 key_name: str = KEY_NAME, algorithm: str = "hmac-sha256") -> None:
        binary = _knotd()
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
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen([binary, "-c", str(config_path)],
                                            stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(ADDRESS, self.port, timeout=START_TIMEOUT)
            self._wait_zones_loaded()
        except BaseException:  # whatever went wrong, no knotd is left behind
            self.stop()
            raise

    def _wait_zones_loaded(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        for zone in self.zones:
            while self._soa_rcode(zone) != dns.rcode.NOERROR:
                if time.monotonic() > deadline:
                    raise AssertionError(f"knotd did not load {zone}:\n{self.log()}")
                time.sleep(0.05)

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
