"""The Caddy engine against the real Caddy 2.6: rendered files pass ``caddy validate``
and behave as the site settings say, over real HTTP and TLS on loopback."""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from app.engines.base import BackendSpec, CertificateSpec, SiteSpec, acme_webroot
from tests.caddy_node import (
    Backend,
    CaddyNode,
    read_websocket_frame,
    websocket_accept,
    websocket_frame,
)
from tests.nginx_node import self_signed
from tests.unit.test_render_caddy import batch_sites, golden_sites

PASSWORD = "open-sesame-2026"
TLS_NAMES = ["secure.example.com", "force.example.com"]
TOKEN = "tok-3fa9c1d2e7"


# --- validation --------------------------------------------------------------------

@pytest.fixture(scope="module")
def certificate() -> CertificateSpec:
    return self_signed(TLS_NAMES + ["*.example.com", "*.cdn.shop.example.com"])


@pytest.mark.parametrize("listen_address", ["127.0.0.2", None, "::1"])
def test_golden_sites_and_a_large_batch_pass_caddy_validate(tmp_path, certificate,
                                                             listen_address):
    node = CaddyNode(tmp_path)
    # Only validated, never bound: any listen address the node model allows will do.
    node.spec = replace(node.spec, listen_address=listen_address)
    for sites in (golden_sites(certificate), batch_sites(300, certificate)):
        rendered = node.write(sites)
        node.run(rendered.test_command)


def test_caddy_validate_catches_a_broken_site_file(tmp_path, certificate):
    """The guard the deployment relies on: a bad file fails the node's test command."""
    node = CaddyNode(tmp_path)
    rendered = node.write(golden_sites(certificate))
    site_file = Path(rendered.node_path("sites/plain.example.com.caddy"))
    site_file.write_text(site_file.read_text().replace("reverse_proxy", "reverse_proxyy"))
    with pytest.raises(AssertionError, match="reverse_proxyy"):
        node.run(rendered.test_command)


def test_header_names_that_are_caddy_keywords_stay_header_names(tmp_path, certificate):
    node = CaddyNode(tmp_path)
    site = SiteSpec(id=9, owner_id=10, domain="keywords.example.com",
                    backends=(BackendSpec("127.0.0.1", 8080),),
                    headers=(("defer", "first"), ("match", "second"), ("X-Kept", "third")))
    node.write([site])
    adapted = subprocess.run(
        [node.binary, "adapt", "--config", str(node.main), "--adapter", "caddyfile"],
        env=node.env, capture_output=True, text=True, check=True, timeout=60)
    headers = [handler for handler in _handlers(json.loads(adapted.stdout))
               if handler.get("handler") == "headers"]
    assert headers and headers[0]["response"]["set"] == {
        "Defer": ["first"], "Match": ["second"], "X-Kept": ["third"]}
    assert headers[0]["response"]["deferred"] is True


def _handlers(config: Any) -> Iterator[dict[str, Any]]:
    """Every handler object anywhere in an adapted Caddy configuration."""
    if isinstance(config, dict):
        if "handler" in config:
            yield config
        for value in config.values():
            yield from _handlers(value)
    elif isinstance(config, list):
        for value in config:
            yield from _handlers(value)


# --- a running node ----------------------------------------------------------------

@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: str


def fetch(node: CaddyNode, host: str, path: str = "/", *, tls: bool = False,
          source: str = "127.0.0.1", headers: dict[str, str] | None = None,
          cafile: str | None = None) -> Response:
    """One request to the node with this Host (and SNI), from a chosen loopback source."""
    port = node.spec.https_port if tls else node.spec.http_port
    raw = socket.create_connection((node.host, port), timeout=10, source_address=(source, 0))
    connection = http.client.HTTPConnection(node.host, port, timeout=10)
    if tls:
        context = ssl.create_default_context(cafile=cafile)
        connection.sock = context.wrap_socket(raw, server_hostname=host)
    else:
        connection.sock = raw
    # As browsers do on a non-default port (Caddy 2.6 picks the access log by host:port).
    connection.request("GET", path, headers={"Host": f"{host}:{port}", **(headers or {})})
    response = connection.getresponse()
    body = response.read().decode()
    connection.close()
    return Response(response.status, response.headers, body)


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("caddy-node")


@pytest.fixture(scope="module")
def backends(workdir) -> Iterator[dict[str, Backend]]:
    started = {name: Backend(name) for name in ("alpha", "beta")}
    started["tls"] = Backend("tls", self_signed(["backend.internal"]), workdir)
    yield started
    for backend in started.values():
        backend.stop()


@pytest.fixture(scope="module")
def cafile(workdir, certificate) -> str:
    path = workdir / "ca.pem"
    path.write_text(certificate.chain_pem)
    return str(path)


def node_sites(backends: dict[str, Backend], certificate: CertificateSpec) -> list[SiteSpec]:
    alpha = BackendSpec("127.0.0.1", backends["alpha"].port)
    beta = BackendSpec("127.0.0.1", backends["beta"].port)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    tls = {"ssl_mode": "custom", "certificate": certificate}
    specs: list[tuple[str, dict[str, Any]]] = [
        ("proxy.example.com", {"headers": (("X-Frame-Options", "DENY"),)}),
        ("balanced.example.com", {"backends": (alpha, beta)}),
        ("ws.example.com", {"websocket": True}),
        ("deny.example.com", {"ip_deny": ("127.0.0.4/32",)}),
        ("allow.example.com", {"ip_allow": ("127.0.0.3/32", "10.0.0.0/8")}),
        ("auth.example.com", {"basic_auth": (("alice", hashed),)}),
        ("blocked.example.com", {"blocked": True, "blocked_reason": "Court order 12/2026",
                                 "basic_auth": (("alice", hashed),)}),
        # secure and force share one certificate, as sites under a wildcard do.
        ("secure.example.com", {**tls, "hsts": True,
                                "headers": (("X-Custom", "hello world"),)}),
        ("force.example.com", {**tls, "force_https": True}),
        ("tlsbackend.example.com", {
            "backend_protocol": "https",
            "backends": (BackendSpec("127.0.0.1", backends["tls"].port),)}),
    ]
    return [SiteSpec(id=n, owner_id=1, domain=domain, **{"backends": (alpha,), **extra})
            for n, (domain, extra) in enumerate(specs, 1)]


@pytest.fixture(scope="module")
def node(workdir, backends, certificate) -> Iterator[CaddyNode]:
    caddy = CaddyNode(workdir / "node")
    try:
        caddy.apply(node_sites(backends, certificate))
        challenge_dir = Path(acme_webroot(caddy.spec)) / ".well-known" / "acme-challenge"
        challenge_dir.mkdir(parents=True)
        (challenge_dir / TOKEN).write_text(f"{TOKEN}.thumbprint")
        yield caddy
    finally:
        caddy.stop()


def test_proxies_to_the_backend_with_the_clients_host_and_writes_the_access_log(
        node, backends):
    response = fetch(node, "proxy.example.com", "/hello")
    assert (response.status, response.body) == (200, "alpha")
    assert backends["alpha"].hosts[-1] == f"proxy.example.com:{node.spec.http_port}"
    # The site's header replaces the backend's instead of adding a second one.
    assert response.headers.get_all("X-Frame-Options") == ["DENY"]
    log = Path(node.spec.log_dir) / "proxy.example.com.access.log"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "/hello" not in (log.read_text() if log.exists()
                                                          else ""):
        time.sleep(0.05)
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["request"]["host"] == f"proxy.example.com:{node.spec.http_port}"
    assert entry["request"]["uri"] == "/hello"


def test_balances_round_robin_across_two_backends(node):
    bodies = [fetch(node, "balanced.example.com").body for _ in range(6)]
    assert sorted(set(bodies)) == ["alpha", "beta"]
    assert all(a != b for a, b in zip(bodies, bodies[1:], strict=False))


def test_websocket_upgrade_is_proxied(node):
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    with socket.create_connection((node.host, node.spec.http_port), timeout=10) as sock:
        sock.sendall(
            b"GET /chat HTTP/1.1\r\nHost: ws.example.com\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: " + key.encode() + b"\r\n\r\n")
        stream = sock.makefile("rb")
        status = stream.readline().decode()
        headers = {}
        for line in iter(stream.readline, b"\r\n"):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        assert status.split()[1] == "101"
        assert headers["sec-websocket-accept"] == websocket_accept(key)
        sock.sendall(websocket_frame(b"ping", os.urandom(4)))
        assert read_websocket_frame(stream) == b"alpha:ping"


def test_ip_deny_list_refuses_only_the_denied_address(node):
    assert fetch(node, "deny.example.com", source="127.0.0.4").status == 403
    assert fetch(node, "deny.example.com", source="127.0.0.1").body == "alpha"


def test_ip_allow_list_admits_only_listed_addresses(node):
    assert fetch(node, "allow.example.com", source="127.0.0.3").body == "alpha"
    assert fetch(node, "allow.example.com", source="127.0.0.1").status == 403


def test_basic_auth_asks_then_admits_the_right_password(node):
    asked = fetch(node, "auth.example.com")
    assert asked.status == 401
    assert asked.headers["WWW-Authenticate"].startswith("Basic")
    assert fetch(node, "auth.example.com", headers=basic("alice", "wrong")).status == 401
    admitted = fetch(node, "auth.example.com", headers=basic("alice", PASSWORD))
    assert (admitted.status, admitted.body) == (200, "alpha")


def test_blocked_site_answers_451_with_its_reason_even_with_credentials(node):
    response = fetch(node, "blocked.example.com", headers=basic("alice", PASSWORD))
    assert response.status == 451
    assert response.body == "This site is blocked: Court order 12/2026"


def test_tls_with_sni_serves_hsts_and_custom_headers(node, cafile):
    response = fetch(node, "secure.example.com", tls=True, cafile=cafile)
    assert (response.status, response.body) == (200, "alpha")
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000"
    assert response.headers["X-Custom"] == "hello world"
    plain = fetch(node, "secure.example.com")
    assert plain.body == "alpha" and "Strict-Transport-Security" not in plain.headers
    assert plain.headers["X-Custom"] == "hello world"


def test_force_https_redirects_to_the_https_port(node, cafile):
    response = fetch(node, "force.example.com", "/cart?item=7")
    assert response.status == 308
    assert response.headers["Location"] == (
        f"https://force.example.com:{node.spec.https_port}/cart?item=7")
    assert fetch(node, "force.example.com", "/cart", tls=True, cafile=cafile).body == "alpha"


def test_https_backend_gets_the_site_name_as_sni(node, backends):
    response = fetch(node, "tlsbackend.example.com")
    assert (response.status, response.body) == (200, "tls")
    assert backends["tls"].sni[-1] == "tlsbackend.example.com"


@pytest.mark.parametrize("host,source", [
    ("blocked.example.com", "127.0.0.1"), ("auth.example.com", "127.0.0.1"),
    ("force.example.com", "127.0.0.1"), ("deny.example.com", "127.0.0.4"),
    ("allow.example.com", "127.0.0.1"),
])
def test_acme_challenge_is_served_from_the_webroot_before_any_rule(node, host, source):
    response = fetch(node, host, f"/.well-known/acme-challenge/{TOKEN}", source=source)
    assert (response.status, response.body) == (200, f"{TOKEN}.thumbprint")
    assert fetch(node, host, "/.well-known/acme-challenge/missing",
                 source=source).status == 404


def test_unknown_host_gets_caddys_empty_200_not_another_site(node):
    response = fetch(node, "unknown.example.com")
    assert (response.status, response.body) == (200, "")


def test_reload_applies_a_changed_site_without_restarting(tmp_path, backends, certificate):
    caddy = CaddyNode(tmp_path)
    try:
        sites = node_sites(backends, certificate)[:2]
        caddy.apply(sites)
        pid = caddy.process.pid if caddy.process else None
        assert "X-Version" not in fetch(caddy, "balanced.example.com").headers
        changed = replace(sites[1], headers=(("X-Version", "2"),), config_version=2)
        caddy.apply([sites[0], changed])
        assert caddy.process is not None and caddy.process.pid == pid
        assert fetch(caddy, "balanced.example.com").headers["X-Version"] == "2"
        caddy.apply([sites[0]])
        assert fetch(caddy, "balanced.example.com").body == ""
    finally:
        caddy.stop()
