"""A real ACME CA on loopback: Pebble, with pebble-challtestsrv as its DNS.

:func:`make_tls_files` makes the CA and ``127.0.0.1``/``localhost`` leaf that
Pebble's own HTTPS listener presents (Debian's package ships none); clients verify
with :attr:`Pebble.ca_bundle`.  :class:`ChallTestSrv` answers Pebble's DNS lookups:
every name resolves to ``default_ipv4`` unless :meth:`ChallTestSrv.set_a` points it
elsewhere.  :class:`Pebble` validates HTTP-01 on ``http_port`` of whatever address a
name resolves to, asking the DNS server it is given (challtestsrv, or any other,
e.g. Knot for DNS-01 through RFC 2136 updates).

Both listen on 127.0.0.1 only, on free ports, and are stopped by PID.  The
fixtures at the bottom start them for a test module; ``pebble_factory`` starts
more (another DNS server, a blocklist, another HTTP port) for one test.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import os
import shutil
import ssl
import tempfile
import threading
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from app.engines.nginx import ENGINE as NGINX
from tests.fleet import FleetNode
from tests.nginx_node import NginxNode
from tests.processes import free_port, listening, require_binary, start, stop

ADDRESS = "127.0.0.1"
# Validations without Pebble's random sleeps, every nonce accepted, and a fresh
# authorization (so a fresh validation) for every order -- almost: Pebble 2.4 still
# reuses an account's valid authorization now and then, so a test that counts
# validations uses a fresh account for each order.
PEBBLE_ENV = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
              "PEBBLE_AUTHZREUSE": "0"}


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_tls_files(directory: Path, common_name: str = "rpcc test CA") -> tuple[Path, Path, Path]:
    """A CA and a leaf for ``localhost`` and ``127.0.0.1`` signed by it, as PEM files
    in ``directory``; returns (CA certificate, leaf certificate, leaf key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(ADDRESS))]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path, cert_path, key_path = (directory / "ca.pem", directory / "cert.pem",
                                    directory / "key.pem")
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_key_pem(leaf_key))
    return ca_path, cert_path, key_path


def _post_json(url: str, payload: dict[str, Any]) -> None:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


class ChallTestSrv:
    """pebble-challtestsrv as a mock DNS server only (its own challenge servers off).

    :param default_ipv4: what every A query answers unless a name has its own record.
    """

    def __init__(self, default_ipv4: str = ADDRESS) -> None:
        binary = require_binary("pebble-challtestsrv")
        self.dns_port, self.management_port = free_port(ADDRESS), free_port(ADDRESS)
        self.root = Path(tempfile.mkdtemp(prefix="rpcc-challtestsrv-"))
        self.log_path = self.root / "challtestsrv.log"
        try:
            self.process = start(
                [binary, "-defaultIPv4", default_ipv4, "-defaultIPv6", "",
                 "-dns01", f"{ADDRESS}:{self.dns_port}", "-http01", "", "-https01", "",
                 "-tlsalpn01", "", "-management", f"{ADDRESS}:{self.management_port}"],
                ready=listening((ADDRESS, self.management_port)), log=self.log_path)
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    @property
    def dns_server(self) -> str:
        """``address:port`` for Pebble's ``-dnsserver``."""
        return f"{ADDRESS}:{self.dns_port}"

    @property
    def management_url(self) -> str:
        return f"http://{ADDRESS}:{self.management_port}"

    def set_a(self, host: str, addresses: Sequence[str]) -> None:
        """Answer A queries for ``host`` with exactly ``addresses`` (challtestsrv's
        own add-a appends to what was there)."""
        self.clear_a(host)
        _post_json(f"{self.management_url}/add-a",
                   {"host": host.rstrip(".") + ".", "addresses": list(addresses)})

    def clear_a(self, host: str) -> None:
        """Back to the default address for ``host``."""
        _post_json(f"{self.management_url}/clear-a", {"host": host.rstrip(".") + "."})

    def set_servfail(self, host: str) -> None:
        """Answer every query for ``host`` with SERVFAIL, as a broken zone does."""
        _post_json(f"{self.management_url}/set-servfail", {"host": host.rstrip(".") + "."})

    def clear_servfail(self, host: str) -> None:
        _post_json(f"{self.management_url}/clear-servfail", {"host": host.rstrip(".") + "."})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop(self.process)
        shutil.rmtree(self.root, ignore_errors=True)


class Pebble:
    """Pebble on 127.0.0.1 with its own TLS files.

    :param http_port: the port Pebble connects to for HTTP-01 validations (where
        the nodes serve ``/.well-known/acme-challenge/``).
    :param dns_server: ``address:port`` of the DNS server Pebble resolves names with.
    :param blocklist: domains Pebble refuses to issue for (``rejectedIdentifier``).
    :param env: environment overrides (e.g. ``PEBBLE_VA_ALWAYS_VALID``).
    """

    def __init__(self, *, http_port: int, dns_server: str, blocklist: Sequence[str] = (),
                 env: dict[str, str] | None = None) -> None:
        binary = require_binary("pebble")
        self.root = Path(tempfile.mkdtemp(prefix="rpcc-pebble-"))
        self.ca_path, self.cert_path, self.key_path = make_tls_files(self.root)
        self.port, self.management_port = free_port(ADDRESS), free_port(ADDRESS)
        self.http_port = http_port
        config = {"pebble": {
            "listenAddress": f"{ADDRESS}:{self.port}",
            "managementListenAddress": f"{ADDRESS}:{self.management_port}",
            "certificate": str(self.cert_path), "privateKey": str(self.key_path),
            "httpPort": http_port, "tlsPort": free_port(ADDRESS),
            "ocspResponderURL": "", "externalAccountBindingRequired": False,
            "domainBlocklist": list(blocklist),
        }}
        config_path = self.root / "pebble-config.json"
        config_path.write_text(json.dumps(config))
        self.log_path = self.root / "pebble.log"
        try:
            self.process = start(
                [binary, "-config", str(config_path), "-dnsserver", dns_server],
                ready=listening((ADDRESS, self.port), (ADDRESS, self.management_port)),
                log=self.log_path, env={**os.environ, **PEBBLE_ENV, **(env or {})})
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    @property
    def directory_url(self) -> str:
        return f"https://{ADDRESS}:{self.port}/dir"

    @property
    def ca_bundle(self) -> str:
        """The CA that signed Pebble's HTTPS listener (not the CA it issues from)."""
        return str(self.ca_path)

    def tls(self) -> ssl.SSLContext:
        """A client context trusting Pebble's HTTPS listener."""
        return ssl.create_default_context(cafile=self.ca_bundle)

    def issuing_root(self) -> str:
        """The root Pebble's certificates chain to (new on every start)."""
        url = f"https://{ADDRESS}:{self.management_port}/roots/0"
        with urllib.request.urlopen(url, timeout=10, context=self.tls()) as response:
            return str(response.read().decode())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop(self.process)
        shutil.rmtree(self.root, ignore_errors=True)


class ProblemRelay:
    """A TLS front for Pebble that passes every request through, except those to
    ``path``, which it answers with ``status`` and the problem document ``problem``:
    answers Pebble never gives (it has no rate limits) reach the client over the real
    protocol.  The Host header is passed on, so Pebble's URLs name the relay.
    """

    def __init__(self, pebble: Pebble, path: str, status: int, problem: dict[str, Any],
                 headers: dict[str, str] | None = None) -> None:
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.path == path:
                    self._answer(status, {"Content-Type": "application/problem+json",
                                          **(headers or {})}, json.dumps(problem).encode())
                    return
                upstream = http.client.HTTPSConnection(ADDRESS, pebble.port, timeout=10,
                                                       context=pebble.tls())
                try:
                    upstream.request(self.command, self.path, body=body,
                                     headers=dict(self.headers.items()))
                    response = upstream.getresponse()
                    data = response.read()
                    passed = {k: v for k, v in response.getheaders()
                              if k.lower() not in ("content-length", "transfer-encoding",
                                                   "connection")}
                    self._answer(response.status, passed,
                                 b"" if self.command == "HEAD" else data)
                finally:
                    upstream.close()

            def _answer(self, code: int, answer_headers: dict[str, str], data: bytes) -> None:
                self.send_response(code)
                for name, value in answer_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_HEAD = _relay  # noqa: N815 (http.server's naming)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                relay.requests.append(self.path)

        self.requests: list[str] = []
        self.server = ThreadingHTTPServer((ADDRESS, 0), Handler)
        self.port = self.server.server_address[1]
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pebble.cert_path, pebble.key_path)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def directory_url(self) -> str:
        return f"https://{ADDRESS}:{self.port}/dir"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


# -- nodes Pebble validates on ------------------------------------------------------

def start_nginx_on(address: str, http_port: int) -> NginxNode:
    """An nginx node whose sites listen for HTTP on ``http_port``: Pebble validates
    HTTP-01 on one port, whichever address a name points at, so every node of a test
    fleet uses the same port on its own address."""
    node = NginxNode(address=address)
    node.http_port = http_port
    node.spec = replace(node.spec, http_port=http_port)
    node.write(NGINX.render(node.spec, []))
    node.start()
    return node


def tokens_left(fleet: Sequence[FleetNode]) -> dict[str, list[str]]:
    """HTTP-01 token files still on each node (nodes without any are left out)."""
    left = {}
    for node in fleet:
        directory = node.nginx.acme_root / ".well-known" / "acme-challenge"
        names = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
        if names:
            left[node.name] = names
    return left


# -- fixtures ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def challtestsrv() -> Iterator[ChallTestSrv]:
    """A mock DNS for the module; every name resolves to 127.0.0.1 unless told."""
    server = ChallTestSrv()
    yield server
    server.stop()


@pytest.fixture()
def pebble_factory() -> Iterator[Callable[..., Pebble]]:
    """Start Pebbles (``pebble_factory(http_port=..., dns_server=...)``); all stopped
    after the test."""
    started: list[Pebble] = []

    def start(**kwargs: Any) -> Pebble:
        server = Pebble(**kwargs)
        started.append(server)
        return server

    yield start
    with ExitStack() as teardown:  # every one, even if stopping another fails
        for server in started:
            teardown.callback(server.stop)
