"""Real nginx nodes, local backends and clients for the nginx engine's tests.

An :class:`NginxPrefix` is a node's directory tree (its own ``nginx.conf`` loading
the ModSecurity and GeoIP2 modules, logs, temp and cache directories, managed
directory and ACME webroot) that ``nginx -t`` can check; an :class:`NginxNode`
also runs nginx on it, on one 127.0.0.x address.  Workers run as ``nobody`` when
the tests run as root, so the tree is world-readable, as a real node's must be.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.engines.base import (
    BackendSpec,
    CertificateSpec,
    NodeSpec,
    RenderedConfig,
    SiteSpec,
    acme_webroot,
)
from tests.processes import free_port, require_binary, start, stop

MODULES = (
    "/usr/lib/nginx/modules/ngx_http_modsecurity_module.so",
    "/usr/lib/nginx/modules/ngx_http_geoip2_module.so",
)
USER_AGENT = "rpcc-tests/1.0"
WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Descriptors nginx needs besides the two log files of every site.
BASE_OPEN_FILES = 1024


def allow_open_files(count: int) -> int:
    """Let this process, and so the nginx it starts, open ``count`` files, as far as
    it may; returns the limit now in force.  The master opens every site's two log
    files itself, ``nginx -t`` included, so a large node needs more than the usual
    limit.  Raising the hard limit needs CAP_SYS_RESOURCE: without it the hard limit
    caps the result (and nginx then fails loudly with "Too many open files")."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= count:
        return count
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE,
                           (count, hard if hard == resource.RLIM_INFINITY else max(hard, count)))
        return count
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard


class NginxPrefix:
    """A node's files without a running nginx: enough for ``nginx -t``."""

    def __init__(self, address: str = "127.0.0.1", geoip_db: str | None = None) -> None:
        self.nginx = require_binary("nginx")
        self.root = Path(tempfile.mkdtemp(prefix="rpcc-nginx-"))
        self.root.chmod(0o755)
        self.prefix = self.root / "prefix"
        self.config_dir = self.root / "rpcc"
        self.log_dir = self.root / "log"
        self.cache_dir = self.root / "cache"
        for directory in (self.prefix / "logs", self.prefix / "temp", self.config_dir,
                          self.log_dir, self.cache_dir):
            directory.mkdir(parents=True, mode=0o755)
        self.address = address
        self.http_port, self.https_port = free_port(address), free_port(address)
        # Every node's status listener is on 127.0.0.1, which the nodes share.
        self.status_port = free_port()
        while self.status_port in (self.http_port, self.https_port):
            self.status_port = free_port()
        self.spec = NodeSpec(
            name=f"test-{self.root.name}",
            proxy_type="nginx",
            config_dir=str(self.config_dir),
            test_command=f"{self.nginx} -t {self._args()}",
            reload_command=f"{self.nginx} -s reload {self._args()}",
            listen_address=address,
            http_port=self.http_port,
            https_port=self.https_port,
            log_dir=str(self.log_dir),
            cache_dir=str(self.cache_dir),
            geoip_db_path=geoip_db or str(self.root / "absent.mmdb"),
            status_port=self.status_port,
        )
        self.acme_root = Path(acme_webroot(self.spec))
        self.pid_file = self.prefix / "logs" / "nginx.pid"
        self.error_log = self.prefix / "logs" / "error.log"
        self.main_conf = self.prefix / "nginx.conf"
        self.open_files = BASE_OPEN_FILES

    def use_geoip(self, countries: dict[str, str]) -> None:
        """Build a test GeoIP database ({network: ISO code}) inside the node's tree
        (world-readable, as workers need) and point the node's spec at it."""
        path = self.root / "countries.mmdb"
        write_geoip_db(path, countries)
        self.spec = replace(self.spec, geoip_db_path=str(path))

    def _args(self) -> str:
        # An absolute -c: the forms a node's command may take name absolute paths.
        return (f"-p {self.prefix} -c {self.prefix / 'nginx.conf'} "
                f"-e {self.prefix / 'logs' / 'error.log'}")

    def write_main_conf(self, include_line: str) -> None:
        """What the node's operator keeps: modules, temp paths, the include line."""
        temp = self.prefix / "temp"
        lines = [f"load_module {module};" for module in MODULES] + [
            "worker_processes 1;",
            f"worker_rlimit_nofile {self.open_files};",
            "daemon off;",
            f"pid {self.pid_file};",
            f"error_log {self.error_log};",
            "events { worker_connections 512; }",
            "http {",
            "    include /etc/nginx/mime.types;",
            f"    access_log {self.prefix / 'logs' / 'access.log'};",
            *(f"    {kind}_temp_path {temp / kind};"
              for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")),
            f"    {include_line}",
            "}",
        ]
        self.main_conf.write_text("\n".join(lines) + "\n")

    def write(self, rendered: RenderedConfig) -> None:
        """Replace the managed directory with exactly the rendered files."""
        self.open_files = allow_open_files(BASE_OPEN_FILES + 2 * len(rendered.site_files))
        shutil.rmtree(self.config_dir)
        self.config_dir.mkdir(mode=0o755)
        for relative, text in rendered.files.items():
            path = self.config_dir / relative
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            path.write_text(text)
            path.chmod(0o644)
        self.write_main_conf(rendered.include_line)

    def test(self, rendered: RenderedConfig) -> subprocess.CompletedProcess[str]:
        """Write the files and run the node's own test command; returns its result."""
        self.write(rendered)
        return self.run_test(rendered)

    def run_test(self, rendered: RenderedConfig) -> subprocess.CompletedProcess[str]:
        """The node's test command on the files already written (a test may have
        edited one of them since)."""
        return subprocess.run(rendered.test_command, capture_output=True, text=True,
                              timeout=300)

    def check(self, rendered: RenderedConfig) -> None:
        """``nginx -t`` passes without a warning (hash sizes, duplicate names...)."""
        result = self.test(rendered)
        assert result.returncode == 0 and "[warn]" not in result.stderr, result.stderr

    def put_acme_token(self, token: str, content: str) -> None:
        challenge = self.acme_root / ".well-known" / "acme-challenge"
        challenge.mkdir(parents=True, exist_ok=True, mode=0o755)
        for directory in (self.acme_root, challenge.parent, challenge):
            directory.chmod(0o755)
        (challenge / token).write_text(content)
        (challenge / token).chmod(0o644)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.acme_root, ignore_errors=True)


class NginxNode(NginxPrefix):
    """A running nginx (master and one worker) on its prefix."""

    process: subprocess.Popen[bytes] | None = None

    def apply(self, rendered: RenderedConfig) -> None:
        """What a deployment does: write, test, then start or reload."""
        self.check(rendered)
        if self.process is None:
            self.start()
        else:
            self.reload(rendered)

    def start(self) -> None:
        """Start nginx and wait for its workers (its output, the startup errors
        included, goes to ``logs/nginx.out``)."""
        self.process = start([self.nginx, *self._args().split()],
                             ready=lambda _process: bool(self._children()),
                             log=self.prefix / "logs" / "nginx.out")

    def master_pid(self) -> int:
        return int(self.pid_file.read_text().strip())

    def _workers(self) -> set[int]:
        """PIDs of the running master's children (workers, cache manager and loader)."""
        return self._children() if self.process is not None else set()

    def _children(self) -> set[int]:
        """PIDs of the children of the master its pid file names."""
        if not self.pid_file.exists() or not self.pid_file.read_text():
            return set()
        master = self.master_pid()
        children = set()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                # The command name may hold spaces: fields follow the last ')'.
                if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                    children.add(int(entry))
        return children

    def reload(self, rendered: RenderedConfig) -> None:
        """Reload and wait until every old worker has gone: until then an old
        worker may still answer with the previous configuration."""
        old = self._workers()
        subprocess.run(rendered.reload_command, check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            current = self._workers()
            if current and not current & old:
                return
            time.sleep(0.02)
        raise RuntimeError(f"nginx kept its old workers: {self.error_log.read_text()[-2000:]}")

    def stop(self) -> None:
        """Stop the master by the PID we started it with (it is our child: reap it).
        Not by its pid file: nginx removes that when it exits, and a master that died
        must not make the teardown fail."""
        if self.process is not None:
            stop(self.process, signal.SIGTERM)
            self.process = None


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: str

    def json(self) -> dict[str, object]:
        result: dict[str, object] = json.loads(self.body)
        return result


def fetch(node: NginxPrefix, host: str, path: str = "/", *, source: str | None = None,
          headers: dict[str, str] | None = None, tls: ssl.SSLContext | None = None) -> Response:
    """One request to the node for ``host`` (over TLS with SNI when ``tls`` is given),
    from ``source`` when the test needs a given client address."""
    port = node.https_port if tls else node.http_port
    sock = socket.create_connection((node.address, port), timeout=10,
                                    source_address=(source, 0) if source else None)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.sock = tls.wrap_socket(sock, server_hostname=host) if tls else sock
    try:
        conn.request("GET", path, headers={"Host": host, "User-Agent": USER_AGENT,
                                           "Accept": "*/*", **(headers or {})})
        response = conn.getresponse()
        body = response.read().decode(errors="replace")
        return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        conn.close()


def basic_auth(username: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class _BackendHandler(BaseHTTPRequestHandler):
    """Answers JSON naming its backend and echoing what it received; completes a
    WebSocket handshake and echoes one frame when asked to upgrade."""

    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes: with Nagle's algorithm the second waits
    # for nginx's delayed ACK, 40 ms per proxied request.
    disable_nagle_algorithm = True
    server: _BackendServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.requests += 1
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self._websocket()
            return
        body = json.dumps({"backend": self.server.name, "path": self.path,
                           "count": self.server.requests,
                           "headers": dict(self.headers.items())}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _websocket(self) -> None:
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest())
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self.end_headers()
        self.wfile.flush()
        self.wfile.write(_frame(read_frame(self.rfile.read), mask=False))
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Quiet: the test output is about nginx."""


class _BackendServer(ThreadingHTTPServer):
    daemon_threads = True
    name = ""
    requests = 0
    # The server names TLS clients asked for, one per handshake.
    sni: list[str | None]


class Backend:
    """A small HTTP (or HTTPS) server on a free 127.0.0.1 port, in a thread; over TLS
    it records the SNI name of every handshake in ``sni``."""

    def __init__(self, name: str, tls: tuple[str, str] | None = None) -> None:
        self.server = _BackendServer(("127.0.0.1", free_port()), _BackendHandler)
        self.server.name = name
        self.server.sni = []
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            context.sni_callback = lambda _sock, server_name, _context: (
                self.server.sni.append(server_name))
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def requests(self) -> int:
        return self.server.requests

    @property
    def sni(self) -> list[str | None]:
        return self.server.sni

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _frame(payload: bytes, mask: bool) -> bytes:
    """One final text frame (payloads under 126 bytes are all the tests send)."""
    assert len(payload) < 126
    if not mask:
        return bytes([0x81, len(payload)]) + payload
    key = os.urandom(4)
    return bytes([0x81, 0x80 | len(payload)]) + key + bytes(
        b ^ key[i % 4] for i, b in enumerate(payload))


def read_frame(read: Callable[[int], bytes]) -> bytes:
    """The payload of one short frame, unmasking it if masked."""
    _, second = read(2)
    key = read(4) if second & 0x80 else b""
    payload = read(second & 0x7F)
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if key else payload


def websocket_echo(node: NginxPrefix, host: str, message: bytes) -> tuple[int, bytes]:
    """Upgrade through the node, send one masked frame; returns (status, echo)."""
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection((node.address, node.http_port), timeout=10) as sock:
        sock.sendall((f"GET /socket HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n"
                      f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        stream = sock.makefile("rb")
        status = int(stream.readline().split()[1])
        headers = {}
        while (line := stream.readline().strip()):
            name, _, value = line.decode().partition(":")
            headers[name.lower()] = value.strip()
        if status != 101:
            return status, b""
        expected = base64.b64encode(hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest())
        assert headers["sec-websocket-accept"] == expected.decode()
        sock.sendall(_frame(message, mask=True))
        return status, read_frame(stream.read)


def self_signed(names: Iterable[str]) -> CertificateSpec:
    """A fresh self-signed certificate (and its key) for these DNS names."""
    names = list(names)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return CertificateSpec(
        chain_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        key_pem=key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()).decode(),
    )


def client_context(certificate: CertificateSpec) -> ssl.SSLContext:
    """A client that trusts exactly this certificate and checks the host name."""
    return ssl.create_default_context(cadata=certificate.chain_pem)


def write_geoip_db(path: Path, countries: dict[str, str]) -> None:
    """A GeoIP2-Country style database: {network: ISO code}; more specific networks
    may be nested in broader ones (inserted broad first)."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPNetwork, IPSet

    writer = MMDBWriter(ip_version=4, database_type="GeoIP2-Country")
    for network in sorted(countries, key=lambda n: IPNetwork(n).prefixlen):
        writer.insert_network(IPSet([network]), {"country": {"iso_code": countries[network]}})
    writer.to_db_file(str(path))
    path.chmod(0o644)


def long_domain(length: int) -> str:
    """A valid domain of exactly ``length`` characters (labels of 63, then ``.com``),
    the longest server name a node's hash must hold."""
    body = "".join("." if i % 64 == 63 else "a" for i in range(length - len(".com")))
    assert not body.endswith("."), "pick another length"
    return body + ".com"


# bcrypt of "golden-password": fixed, so that golden files do not change.
GOLDEN_PASSWORD = "golden-password"
GOLDEN_HASH = "$2b$10$5PpECEorazKrzooxGSVXGeXGqh4SKphrAo5F4r4/ChijZ7RBovVCm"


def golden_sites(certificate: CertificateSpec) -> dict[str, SiteSpec]:
    """The representative sites of tests/golden/nginx/, one per case.  Backends are
    documentation addresses: ``nginx -t`` never connects to them."""
    return {
        "minimal": SiteSpec(
            id=1, owner_id=10, domain="minimal.example.com",
            backends=(BackendSpec("192.0.2.10", 8080),),
        ),
        "everything": SiteSpec(
            id=2, owner_id=11, domain="everything.example.com",
            aliases=("www.everything.example.com", "*.everything.example.net"),
            backends=(BackendSpec("192.0.2.20", 8443, 2), BackendSpec("192.0.2.21", 8443)),
            backend_protocol="https", ssl_mode="custom", force_https=True, hsts=True,
            http2=True, websocket=True, waf_level="high", cache_enabled=True, cache_ttl=120,
            geo_mode="allow", geo_countries=("US", "DE"), ip_allow=("198.51.100.0/24",),
            ip_deny=("198.51.100.7/32", "2001:db8:bad::/48"),
            basic_auth=(("alice", GOLDEN_HASH),), rate_limit_rps=20, rate_limit_burst=40,
            headers=(("X-Frame-Options", "DENY"),
                     ("Content-Security-Policy", "default-src https: data:")),
            config_version=7, certificate=certificate,
        ),
        "blocked": SiteSpec(
            id=3, owner_id=12, domain="blocked.example.com",
            backends=(BackendSpec("192.0.2.30", 80),),
            blocked=True, blocked_reason="Court order 2024/17 & abuse report #88",
            config_version=3,
        ),
        "tls_hsts": SiteSpec(
            id=4, owner_id=10, domain="secure.example.com", aliases=("www.secure.example.com",),
            backends=(BackendSpec("192.0.2.40", 3000),), ssl_mode="letsencrypt",
            force_https=True, hsts=True, headers=(("X-Content-Type-Options", "nosniff"),),
            certificate=certificate,
        ),
        "geo_waf_cache": SiteSpec(
            id=5, owner_id=13, domain="shop.example.org",
            backends=(BackendSpec("192.0.2.50", 8000),), waf_level="medium",
            cache_enabled=True, cache_ttl=3600, geo_mode="deny", geo_countries=("KP", "IR"),
        ),
        "backends": SiteSpec(
            id=6, owner_id=14, domain="api.example.net",
            backends=(BackendSpec("192.0.2.60", 443, 5), BackendSpec("192.0.2.61", 443, 1),
                      BackendSpec("2001:db8::60", 443, 2)),
            backend_protocol="https", websocket=True,
        ),
    }
