"""Real components for the Caddy engine tests: a Caddy node on loopback, small local
backends (HTTP, WebSocket, optionally TLS) and self-signed certificates.

Everything binds 127.0.0.x and is stopped by its owner's ``stop()`` (fixtures call it
in their teardown); Caddy is stopped by PID.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import ssl
import struct
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from app.engines.base import CertificateSpec, NodeSpec, RenderedConfig, SiteSpec
from app.engines.caddy import ENGINE
from tests.processes import free_port, listening, require_binary, start, stop, wait_for_port

WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class CaddyNode:
    """``caddy run`` with the engine's files, as a node would hold them.

    The node's main Caddyfile is the engine's include snippet with this node's own
    global options (admin API on a free loopback port, ``default_bind``) added."""

    def __init__(self, root: Path, listen_address: str | None = "127.0.0.2") -> None:
        self.binary = require_binary("caddy")
        self.root = root
        self.admin = f"127.0.0.1:{free_port()}"
        self.main = root / "Caddyfile"
        host = listen_address or "127.0.0.1"
        self.spec = NodeSpec(
            name="caddy-test", proxy_type="caddy", config_dir=str(root / "rpcc.d"),
            test_command=f"{self.binary} validate --config {self.main} --adapter caddyfile",
            reload_command=f"{self.binary} reload --config {self.main} --adapter caddyfile "
                           f"--address {self.admin}",
            listen_address=listen_address, http_port=free_port(host),
            https_port=free_port(host), log_dir=str(root / "logs"),
        )
        self.host = host
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root / "home"),
            "XDG_DATA_HOME": str(root / "data"), "XDG_CONFIG_HOME": str(root / "config"),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def write(self, sites: list[SiteSpec]) -> RenderedConfig:
        """Replace the managed directory with the rendered files; write the main file."""
        rendered = ENGINE.render(self.spec, sites)
        config_dir = Path(rendered.config_dir)
        shutil.rmtree(config_dir, ignore_errors=True)
        for relative, text in rendered.files.items():
            target = config_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        own_options = f"{{\n\tadmin {self.admin}\n\tdefault_bind 127.0.0.1\n"
        self.main.write_text(rendered.include_line.replace("{\n", own_options, 1) + "\n")
        return rendered

    def run(self, command: list[str]) -> None:
        """:raises AssertionError: with Caddy's own message when the command fails."""
        result = subprocess.run(command, env=self.env, capture_output=True, text=True,
                                timeout=60)
        if result.returncode != 0:
            raise AssertionError(f"{' '.join(command[:2])} failed:\n{result.stderr[-4000:]}")

    def apply(self, sites: list[SiteSpec]) -> None:
        """Write, validate, then start Caddy or reload it through the admin API."""
        rendered = self.write(sites)
        self.run(rendered.test_command)
        if self.process is None:
            self._start()
        else:
            self.run(rendered.reload_command)
        if sites:
            wait_for_port(self.host, self.spec.http_port)

    def _start(self) -> None:
        host, port = self.admin.split(":")
        self.process = start(
            [self.binary, "run", "--config", str(self.main), "--adapter", "caddyfile"],
            ready=listening((host, int(port))), log=self.root / "caddy.log", env=self.env)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None


def websocket_frame(payload: bytes, mask: bytes | None) -> bytes:
    """One final text frame (payloads under 126 bytes); clients must mask."""
    assert len(payload) < 126
    if mask is None:
        return bytes([0x81, len(payload)]) + payload
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


def read_websocket_frame(stream: io.BufferedIOBase) -> bytes:
    first, second = struct.unpack("!BB", stream.read(2))
    length = second & 0x7F
    assert length < 126, "test frames are short"
    mask = stream.read(4) if second & 0x80 else None
    payload = stream.read(length)
    return bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if mask else payload


def websocket_accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest()).decode()


class _Handler(BaseHTTPRequestHandler):
    backend: Backend
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.backend.hosts.append(self.headers.get("Host", ""))
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self._echo_websocket()
            return
        body = self.backend.name.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        # Sites may set this header too: theirs must replace it, not duplicate it.
        self.send_header("X-Frame-Options", "SAMEORIGIN")
        self.end_headers()
        self.wfile.write(body)

    def _echo_websocket(self) -> None:
        """The upgrade by hand, then one frame echoed back."""
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept",
                         websocket_accept(self.headers["Sec-WebSocket-Key"]))
        self.end_headers()
        self.wfile.flush()
        payload = read_websocket_frame(self.rfile)
        self.wfile.write(websocket_frame(self.backend.name.encode() + b":" + payload, None))
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the tests assert on what the backend saw instead."""


class Backend:
    """An HTTP backend on a free 127.0.0.1 port answering its name; it records the
    Host headers (and, over TLS, the SNI names) it was sent."""

    def __init__(self, name: str, certificate: CertificateSpec | None = None,
                 workdir: Path | None = None) -> None:
        self.name = name
        self.hosts: list[str] = []
        self.sni: list[str | None] = []
        handler = type(f"Handler_{name}", (_Handler,), {"backend": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        if certificate is not None and workdir is not None:
            self.server.socket = self._tls_context(certificate, workdir).wrap_socket(
                self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _tls_context(self, certificate: CertificateSpec, workdir: Path) -> ssl.SSLContext:
        chain, key = workdir / f"{self.name}.crt", workdir / f"{self.name}.key"
        chain.write_text(certificate.chain_pem)
        key.write_text(certificate.key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain, key)
        context.sni_callback = self._record_sni
        return context

    def _record_sni(self, sock: object, name: str | None, context: ssl.SSLContext) -> None:
        self.sni.append(name)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
