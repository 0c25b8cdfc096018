"""The nginx engine against the real nginx 1.22 with the ModSecurity and GeoIP2
modules: rendered files pass ``nginx -t`` without a warning, and a running node
behaves as the site settings say, over real HTTP and TLS on 127.0.0.x.

Every journey goes the way a deployment does: ``ENGINE.render`` then the node's
``apply`` (write, ``nginx -t``, start or reload), then real requests.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from app.engines.base import BackendSpec, CertificateSpec, RenderedConfig, SiteSpec
from app.engines.nginx import ENGINE
from app.security import COUNTRY_CODES, hash_basic_auth_password, validate_domain
from tests.nginx_node import (
    Backend,
    NginxNode,
    NginxPrefix,
    basic_auth,
    client_context,
    fetch,
    golden_sites,
    long_domain,
    self_signed,
    websocket_echo,
)
from tests.unit.test_render_nginx import numbered_sites

NODE_ADDRESS = "127.0.0.2"
# Client source addresses; the test GeoIP database places them in countries.
HOME, ALLOWED, DENIED, LIMITED = "127.0.0.1", "127.0.0.3", "127.0.0.4", "127.0.0.9"
IN_NORTH_KOREA, IN_GERMANY, NOWHERE = "127.0.0.7", "127.0.0.8", "127.0.1.1"
COUNTRIES = {"127.0.0.0/24": "US", f"{IN_NORTH_KOREA}/32": "KP", f"{IN_GERMANY}/32": "DE"}
PASSWORD = "open-sesame-2026"
TLS_NAMES = ["secure.example.com", "force.example.com"]
TOKEN = "tok-3fa9c1d2e7"
XSS = "/search?q=%3Cscript%3Ealert(1)%3C/script%3E"
SQLI = "/item?id=%27%20OR%201%3D1--"


def rendered_for(prefix: NginxPrefix, sites: list[SiteSpec]) -> RenderedConfig:
    return ENGINE.render(prefix.spec, sites)


# --- nginx -t ----------------------------------------------------------------------

@pytest.fixture()
def prefix() -> Iterator[NginxPrefix]:
    scratch = NginxPrefix(NODE_ADDRESS)
    scratch.use_geoip(COUNTRIES)
    yield scratch
    scratch.remove()


@pytest.fixture(scope="module")
def golden() -> dict[str, SiteSpec]:
    return golden_sites(self_signed(["everything.example.com", "secure.example.com"]))


@pytest.mark.parametrize("case", ["minimal", "everything", "blocked", "tls_hsts",
                                  "geo_waf_cache", "backends"])
def test_each_golden_site_passes_nginx_t_without_warnings(prefix, golden, case):
    prefix.check(rendered_for(prefix, [golden[case]]))


@pytest.mark.parametrize("listen_address", [NODE_ADDRESS, None, "::1"])
def test_all_golden_sites_together_pass_nginx_t_without_warnings(prefix, golden,
                                                                 listen_address):
    # Only checked, never bound: any listen address the node model allows will do.
    prefix.spec = replace(prefix.spec, listen_address=listen_address)
    rendered = rendered_for(prefix, list(golden.values()))
    prefix.check(rendered)
    assert "modsecurity_rules_file" in rendered.files["rpcc.conf"]
    assert "geoip2.conf" in rendered.files


def test_nginx_t_catches_a_broken_site_file(prefix, golden):
    """The guard a deployment relies on: a bad file fails the node's test command."""
    rendered = rendered_for(prefix, [golden["minimal"]])
    path = "sites/minimal.example.com.conf"
    broken = replace(rendered, files={**rendered.files,
                                      path: rendered.files[path].replace("proxy_pass",
                                                                         "proxy_passs")})
    result = prefix.test(broken)
    assert result.returncode != 0 and 'unknown directive "proxy_passs"' in result.stderr


# Extremes the validators in app/security.py accept, each of which must render a
# configuration nginx takes (the property tests reach them only by chance).
EDGE_VALUES: dict[str, dict[str, Any]] = {
    "no burst": {"rate_limit_rps": 1, "rate_limit_burst": 0},
    "largest rate and burst": {"rate_limit_rps": 100_000, "rate_limit_burst": 100_000},
    "broadcast address rules": {"ip_deny": ("255.255.255.255/32",),
                                "ip_allow": ("255.255.255.255/32",)},
    "everyone": {"ip_allow": ("0.0.0.0/0", "::/0")},
    "year-long cache": {"cache_enabled": True, "cache_ttl": 31_536_000},
    "one-second cache": {"cache_enabled": True, "cache_ttl": 1},
    "backend ports and weights": {"backends": (BackendSpec("127.0.0.1", 1, 100),
                                               BackendSpec("::1", 65535, 1),
                                               BackendSpec("localhost", 8080, 1))},
    "every country": {"geo_mode": "allow", "geo_countries": tuple(sorted(COUNTRY_CODES))},
    "header value": {"headers": (("X-" + "A" * 62, "a#b !%&()*+,-./:=?@[]^_|~ z" * 30),)},
}


@pytest.mark.parametrize("case", sorted(EDGE_VALUES))
def test_edge_values_the_validators_accept_pass_nginx_t(prefix, case):
    """A 253-character domain too: its files' names must stay within 255 bytes."""
    settings: dict[str, Any] = {"backends": (BackendSpec("192.0.2.1", 80),),
                                **EDGE_VALUES[case]}
    site = SiteSpec(id=1, owner_id=1, domain=long_domain(253),
                    aliases=("*.example.com", "xn--bcher-kva.example"), **settings)
    prefix.check(rendered_for(prefix, [site]))


def long_site(length: int) -> SiteSpec:
    domain = long_domain(length)
    assert validate_domain(domain) == domain and len(domain) == length
    return SiteSpec(id=99_999, owner_id=1, domain=domain,
                    backends=(BackendSpec("192.0.2.1", 80),))


def nginx_t_with(prefix: NginxPrefix, rendered: RenderedConfig, directive: str,
                 size: int) -> str:
    """``nginx -t``'s output once the entry file sets ``directive`` to ``size`` (only
    that file is rewritten: writing thousands of site files again is slow)."""
    entry, count = re.subn(rf"^{directive} \d+;$", f"{directive} {size};",
                           rendered.files["rpcc.conf"], flags=re.MULTILINE)
    assert count == 1
    (prefix.config_dir / "rpcc.conf").write_text(entry)
    return prefix.run_test(rendered).stderr


def test_hash_sizes_hold_5000_sites_and_a_199_character_name(prefix):
    """The sizes the unit tests pin are ones nginx builds its hashes with, without
    a warning; half the name bucket cannot even hold the long name."""
    rendered = rendered_for(prefix, numbered_sites(5000, geo_every=4) + [long_site(199)])
    assert "server_names_hash_bucket_size 256;" in rendered.files["rpcc.conf"]
    prefix.check(rendered)
    assert "could not build server_names_hash" in nginx_t_with(
        prefix, rendered, "server_names_hash_bucket_size", 128)


def test_a_thousand_sites_fill_their_hashes_without_warnings(prefix):
    """With nginx's 64-byte buckets (one name or variable each) the same node warns
    "could not build optimal ..." for its server names and its country maps."""
    rendered = rendered_for(prefix, numbered_sites(1000, geo_every=1))
    prefix.check(rendered)
    for directive, hash_name in (("server_names_hash_bucket_size", "server_names_hash"),
                                 ("variables_hash_bucket_size", "variables_hash")):
        output = nginx_t_with(prefix, rendered, directive, 64)
        assert f"[warn] could not build optimal {hash_name}" in output
        # Restore the rendered value before trying the next directive.
        (prefix.config_dir / "rpcc.conf").write_text(rendered.files["rpcc.conf"])


def test_a_thousand_wildcard_aliases_pass_without_warnings(prefix):
    sites = [replace(site, aliases=(f"*.{'w' * 56}{site.id}.example.net",))
             for site in numbered_sites(1000)]
    prefix.check(rendered_for(prefix, sites))


@pytest.mark.parametrize("length,bucket", [(47, 128), (238, 256), (239, 512)])
def test_bucket_size_is_the_smallest_nginx_accepts(prefix, length, bucket):
    """nginx rounds a bucket up to its 64-byte cache line, so below 64 nothing fails."""
    rendered = rendered_for(prefix, numbered_sites(3) + [long_site(length)])
    assert f"server_names_hash_bucket_size {bucket};" in rendered.files["rpcc.conf"]
    prefix.check(rendered)
    assert "could not build server_names_hash" in nginx_t_with(
        prefix, rendered, "server_names_hash_bucket_size", bucket // 2)


# --- a running node ----------------------------------------------------------------

@pytest.fixture(scope="module")
def certificate() -> CertificateSpec:
    return self_signed(TLS_NAMES)


@pytest.fixture(scope="module")
def backends(tmp_path_factory) -> Iterator[dict[str, Backend]]:
    workdir = tmp_path_factory.mktemp("nginx-backends")
    backend_tls = self_signed(["backend.internal"])
    chain, key = workdir / "backend.crt", workdir / "backend.key"
    chain.write_text(backend_tls.chain_pem)
    key.write_text(backend_tls.key_pem)
    started: dict[str, Backend] = {}
    try:
        for name in ("alpha", "beta"):
            started[name] = Backend(name)
        started["tls"] = Backend("tls", tls=(str(chain), str(key)))
        yield started
    finally:
        for backend in started.values():
            backend.stop()


def node_sites(backends: dict[str, Backend], certificate: CertificateSpec) -> list[SiteSpec]:
    alpha = BackendSpec("127.0.0.1", backends["alpha"].port)
    beta = BackendSpec("127.0.0.1", backends["beta"].port)
    # As the product stores it: bcrypt through the shared helper.
    hashed = hash_basic_auth_password(PASSWORD)
    tls: dict[str, Any] = {"ssl_mode": "custom", "certificate": certificate}
    specs: list[tuple[str, dict[str, Any]]] = [
        ("proxy.example.com", {}),
        ("weighted.example.com", {"backends": (replace(alpha, weight=3), beta)}),
        ("ws.example.com", {"websocket": True}),
        ("deny.example.com", {"ip_deny": (f"{DENIED}/32",)}),
        ("allow.example.com", {"ip_allow": (f"{ALLOWED}/32", "10.0.0.0/8")}),
        ("auth.example.com", {"basic_auth": (("alice", hashed),)}),
        ("limited.example.com", {"rate_limit_rps": 1, "rate_limit_burst": 2}),
        ("cache.example.com", {"cache_enabled": True, "cache_ttl": 60}),
        ("waf.example.com", {"waf_level": "medium"}),
        ("geoallow.example.com", {"geo_mode": "allow", "geo_countries": ("US", "DE")}),
        ("geodeny.example.com", {"geo_mode": "deny", "geo_countries": ("KP",)}),
        ("blocked.example.com", {"blocked": True, "blocked_reason": "Court order 12/2026",
                                 "basic_auth": (("alice", hashed),)}),
        # secure and force share one certificate, as sites under a wildcard do.
        ("secure.example.com", {**tls, "hsts": True,
                                "headers": (("X-Custom", "hello world"),)}),
        ("force.example.com", {**tls, "force_https": True, "hsts": True}),
        ("tlsbackend.example.com", {
            "backend_protocol": "https",
            "backends": (BackendSpec("127.0.0.1", backends["tls"].port),)}),
    ]
    return [SiteSpec(id=n, owner_id=1, domain=domain, **{"backends": (alpha,), **extra})
            for n, (domain, extra) in enumerate(specs, 1)]


@pytest.fixture(scope="module")
def node(backends, certificate) -> Iterator[NginxNode]:
    nginx = NginxNode(NODE_ADDRESS)
    try:
        nginx.use_geoip(COUNTRIES)
        nginx.apply(ENGINE.render(nginx.spec, node_sites(backends, certificate)))
        nginx.put_acme_token(TOKEN, f"{TOKEN}.thumbprint")
        yield nginx
    finally:
        nginx.stop()
        nginx.remove()


def seen_by_backend(body: str) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(body)
    return answer


def test_proxies_to_the_backend_with_the_clients_host(node):
    response = fetch(node, "proxy.example.com", "/hello?x=1")
    assert response.status == 200
    seen = seen_by_backend(response.body)
    assert (seen["backend"], seen["path"]) == ("alpha", "/hello?x=1")
    assert seen["headers"]["Host"] == "proxy.example.com"
    assert seen["headers"]["X-Forwarded-For"] == HOME
    assert seen["headers"]["X-Forwarded-Proto"] == "http"
    assert response.headers["server"] == "nginx"  # server_tokens off: no version


def test_weights_split_requests_three_to_one(node):
    counts = Counter(seen_by_backend(fetch(node, "weighted.example.com").body)["backend"]
                     for _ in range(40))
    assert counts["alpha"] + counts["beta"] == 40
    assert abs(counts["alpha"] - 30) <= 3, counts


def test_websocket_upgrade_echoes_a_frame(node):
    assert websocket_echo(node, "ws.example.com", b"ping through nginx") == (
        101, b"ping through nginx")


def test_ip_deny_list_refuses_only_the_denied_address(node):
    assert fetch(node, "deny.example.com", source=DENIED).status == 403
    assert fetch(node, "deny.example.com", source=HOME).status == 200


def test_ip_allow_list_admits_only_listed_addresses(node):
    assert fetch(node, "allow.example.com", source=ALLOWED).status == 200
    assert fetch(node, "allow.example.com", source=HOME).status == 403


def test_basic_auth_asks_then_admits_the_bcrypt_password(node):
    asked = fetch(node, "auth.example.com")
    assert asked.status == 401
    assert asked.headers["www-authenticate"] == 'Basic realm="Restricted"'
    assert fetch(node, "auth.example.com", headers=basic_auth("alice", "wrong")).status == 401
    admitted = fetch(node, "auth.example.com", headers=basic_auth("alice", PASSWORD))
    assert admitted.status == 200
    assert seen_by_backend(admitted.body)["backend"] == "alpha"


def test_rate_limit_rejects_a_burst_with_429(node):
    statuses = [fetch(node, "limited.example.com", source=LIMITED).status for _ in range(10)]
    # One request, then a burst of two, pass; the rest of the volley is refused.
    assert statuses[:3] == [200, 200, 200], statuses
    assert set(statuses[3:]) <= {200, 429} and statuses.count(429) >= 5, statuses
    assert fetch(node, "limited.example.com", source=HOME).status == 200


def test_cache_answers_the_second_request_and_bypasses_credentials(node):
    first = fetch(node, "cache.example.com", "/catalogue")
    second = fetch(node, "cache.example.com", "/catalogue")
    assert first.headers["x-cache-status"] == "MISS"
    assert second.headers["x-cache-status"] == "HIT"
    assert second.body == first.body
    with_cookie = fetch(node, "cache.example.com", "/catalogue",
                        headers={"Cookie": "session=abc"})
    assert with_cookie.headers["x-cache-status"] == "BYPASS"
    assert seen_by_backend(with_cookie.body)["count"] > seen_by_backend(first.body)["count"]


@pytest.mark.parametrize("path", [XSS, SQLI])
def test_waf_blocks_attacks_at_medium_and_lets_them_through_when_off(node, path):
    assert fetch(node, "waf.example.com", path).status == 403
    assert fetch(node, "proxy.example.com", path).status == 200


def test_waf_lets_ordinary_requests_through(node):
    response = fetch(node, "waf.example.com", "/search?q=blue+shoes")
    assert response.status == 200
    assert seen_by_backend(response.body)["path"] == "/search?q=blue+shoes"


@pytest.mark.parametrize("source,status", [
    (HOME, 200), (IN_GERMANY, 200), (IN_NORTH_KOREA, 403), (NOWHERE, 403)])
def test_country_allow_list(node, source, status):
    assert fetch(node, "geoallow.example.com", source=source).status == status


@pytest.mark.parametrize("source,status", [
    (HOME, 200), (IN_GERMANY, 200), (IN_NORTH_KOREA, 403), (NOWHERE, 200)])
def test_country_deny_list(node, source, status):
    assert fetch(node, "geodeny.example.com", source=source).status == status


def test_blocked_site_answers_451_with_its_reason_even_with_credentials(node):
    response = fetch(node, "blocked.example.com", "/any/page",
                     headers=basic_auth("alice", PASSWORD))
    assert response.status == 451
    assert response.headers["content-type"] == "text/html"
    assert "<h1>blocked.example.com is unavailable</h1>" in response.body
    assert "<p>Court order 12/2026</p>" in response.body


def test_tls_serves_the_certificate_with_hsts_and_custom_headers(node, certificate):
    response = fetch(node, "secure.example.com", tls=client_context(certificate))
    assert response.status == 200
    assert response.headers["strict-transport-security"] == "max-age=31536000"
    assert response.headers["x-custom"] == "hello world"
    assert seen_by_backend(response.body)["headers"]["X-Forwarded-Proto"] == "https"
    plain = fetch(node, "secure.example.com")
    assert plain.status == 200 and "strict-transport-security" not in plain.headers
    assert plain.headers["x-custom"] == "hello world"


def test_force_https_redirects_but_serves_acme_over_http(node, certificate):
    response = fetch(node, "force.example.com", "/cart?item=7")
    assert response.status == 301
    assert response.headers["location"] == (
        f"https://force.example.com:{node.https_port}/cart?item=7")
    assert "strict-transport-security" not in response.headers
    challenge = fetch(node, "force.example.com", f"/.well-known/acme-challenge/{TOKEN}")
    assert (challenge.status, challenge.body) == (200, f"{TOKEN}.thumbprint")
    secure = fetch(node, "force.example.com", "/cart?item=7", tls=client_context(certificate))
    assert secure.status == 200 and seen_by_backend(secure.body)["path"] == "/cart?item=7"


def test_https_backend_receives_the_site_name_as_sni(node, backends):
    response = fetch(node, "tlsbackend.example.com")
    assert response.status == 200
    seen = seen_by_backend(response.body)
    assert (seen["backend"], seen["headers"]["Host"]) == ("tls", "tlsbackend.example.com")
    assert backends["tls"].sni and set(backends["tls"].sni) == {"tlsbackend.example.com"}


@pytest.mark.parametrize("host,source", [
    ("blocked.example.com", HOME), ("auth.example.com", HOME), ("force.example.com", HOME),
    ("deny.example.com", DENIED), ("allow.example.com", HOME),
    ("geoallow.example.com", IN_NORTH_KOREA), ("waf.example.com", HOME),
])
def test_acme_challenge_is_served_before_any_rule(node, host, source):
    response = fetch(node, host, f"/.well-known/acme-challenge/{TOKEN}", source=source)
    assert (response.status, response.body) == (200, f"{TOKEN}.thumbprint")
    assert response.headers["content-type"] == "text/plain"
    missing = fetch(node, host, "/.well-known/acme-challenge/missing", source=source)
    assert missing.status == 404


def test_acme_challenge_is_not_rate_limited(node):
    statuses = {fetch(node, "limited.example.com", f"/.well-known/acme-challenge/{TOKEN}",
                      source=LIMITED).status for _ in range(8)}
    assert statuses == {200}


def test_site_logs_go_to_their_own_files(node):
    fetch(node, "proxy.example.com", "/logged-request")
    log = Path(node.spec.log_dir) / "proxy.example.com.access.log"
    # nginx logs a request after answering it.
    deadline = time.monotonic() + 5
    while "GET /logged-request " not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "GET /logged-request HTTP/1.1" in log.read_text()


def test_reload_applies_a_changed_site_without_restarting(backends, certificate):
    nginx = NginxNode(NODE_ADDRESS)
    try:
        sites = node_sites(backends, certificate)[:2]
        nginx.apply(ENGINE.render(nginx.spec, sites))
        master = nginx.master_pid()
        assert "x-version" not in fetch(nginx, "weighted.example.com").headers
        changed = replace(sites[1], headers=(("X-Version", "2"),), config_version=2)
        nginx.apply(ENGINE.render(nginx.spec, [sites[0], changed]))
        assert nginx.master_pid() == master
        assert fetch(nginx, "weighted.example.com").headers["x-version"] == "2"
    finally:
        nginx.stop()
        nginx.remove()


def test_stopping_a_node_whose_nginx_already_exited_does_not_fail_the_teardown():
    """nginx removes its pid file when it exits: a teardown stopping a node that died
    must not raise (and so leave the fixture's other nodes running)."""
    nginx = NginxNode(NODE_ADDRESS)
    try:
        nginx.apply(ENGINE.render(nginx.spec, []))
        process = nginx.process
        assert process is not None
        quit_command = nginx.spec.reload_command.replace("-s reload", "-s quit").split()
        subprocess.run(quit_command, check=True, capture_output=True, timeout=30)
        process.wait(timeout=10)
        assert not nginx.pid_file.exists()
        nginx.stop()
        assert nginx.process is None
    finally:
        nginx.stop()
        nginx.remove()
