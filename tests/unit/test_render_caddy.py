"""The Caddy renderer as a pure function: golden files, honesty about what it cannot
do, and refusal of any value that could change the Caddyfile's structure.

``golden_sites`` and ``batch_sites`` are also validated and served by the real Caddy
in ``tests/integration/test_caddy_engine.py``.
"""

from __future__ import annotations

import base64
import dataclasses
import re

import pytest

from app.engines import get_engine
from app.engines.base import BackendSpec, Capability, CertificateSpec, NodeSpec, SiteSpec
from app.engines.caddy import ENGINE, quote
from tests.hostile import HEADER_VALUES, INJECTION_STRINGS
from tests.render_checks import (
    FAKE_CERTIFICATE,
    HASH_1,
    HASH_2,
    SETTING_SITES,
    compare_golden,
    io_events,
    setting_site,
)

GOLDEN_NODE = NodeSpec(
    name="edge-1", proxy_type="caddy", config_dir="/etc/caddy/rpcc.d",
    test_command="caddy validate --config /etc/caddy/Caddyfile --adapter caddyfile",
    reload_command="caddy reload --config /etc/caddy/Caddyfile --adapter caddyfile",
    listen_address="203.0.113.10", log_dir="/var/log/caddy",
)
# What the Caddyfile lexer or its placeholders give a meaning to (written out here,
# independently of the renderer's own pattern).
FORBIDDEN = set('"\\{}$')


def golden_sites(certificate: CertificateSpec = FAKE_CERTIFICATE) -> list[SiteSpec]:
    """One site per shape an operator meets: plain, TLS with everything, protected,
    blocked."""
    return [
        SiteSpec(id=1, owner_id=10, domain="plain.example.com",
                 backends=(BackendSpec("10.0.0.11", 8080),)),
        SiteSpec(id=2, owner_id=10, domain="shop.example.com",
                 aliases=("www.shop.example.com", "*.cdn.shop.example.com"),
                 backends=(BackendSpec("10.0.0.21", 8443), BackendSpec("2001:db8::21", 8443)),
                 backend_protocol="https", ssl_mode="custom", force_https=True, hsts=True,
                 websocket=True, certificate=certificate, config_version=7,
                 headers=(("X-Frame-Options", "DENY"),
                          ("Content-Security-Policy", "frame-ancestors none"))),
        SiteSpec(id=3, owner_id=11, domain="intranet.example.org",
                 backends=(BackendSpec("intranet-app.internal", 3000),),
                 ssl_mode="self_signed", certificate=certificate, hsts=True,
                 ip_allow=("10.0.0.0/8", "2001:db8::/32"), ip_deny=("10.66.0.0/16",),
                 basic_auth=(("alice", HASH_1), ("bob.smith", HASH_2)),
                 headers=(("X-Robots-Tag", "noindex, nofollow"),)),
        SiteSpec(id=4, owner_id=12, domain="blocked.example.net",
                 backends=(BackendSpec("10.0.0.41", 80),),
                 basic_auth=(("carol", HASH_1),), ip_deny=("192.0.2.0/24",),
                 blocked=True, blocked_reason="Abuse report #4711 (phishing)"),
    ]


def batch_sites(count: int, certificate: CertificateSpec = FAKE_CERTIFICATE) -> list[SiteSpec]:
    """Many sites mixing every supported setting, as a busy node would carry."""
    sites = []
    for n in range(count):
        tls = n % 3 == 0
        sites.append(SiteSpec(
            id=100 + n, owner_id=n % 7, domain=f"site{n}.example.com",
            aliases=(f"www.site{n}.example.com",) + ((f"*.apps{n}.example.com",) if n % 5 == 0
                                                      else ()),
            backends=tuple(BackendSpec(f"10.1.{n % 250}.{k + 1}", 8000 + k)
                           for k in range(1 + n % 3)),
            backend_protocol="https" if n % 4 == 0 else "http",
            ssl_mode="letsencrypt" if tls else "none",
            certificate=certificate if tls else None,
            force_https=tls and n % 2 == 0, hsts=tls,
            ip_allow=("10.0.0.0/8",) if n % 6 == 1 else (),
            ip_deny=(f"10.9.{n % 250}.0/24",) if n % 4 == 1 else (),
            basic_auth=(("user", HASH_1),) if n % 5 == 2 else (),
            headers=(("X-Site", f"site {n}"),) if n % 2 else (),
            blocked=n % 11 == 3, blocked_reason=f"case {n}" if n % 11 == 3 else "",
            config_version=1 + n % 4,
        ))
    return sites


def test_registry_returns_the_caddy_engine():
    assert get_engine("caddy") is ENGINE


def test_golden_files():
    rendered = ENGINE.render(GOLDEN_NODE, golden_sites())
    compare_golden("caddy", {**rendered.files, "include_line.txt": rendered.include_line + "\n"})


def test_rendering_is_pure_and_deterministic():
    sites = golden_sites() + batch_sites(40)
    ENGINE.render(GOLDEN_NODE, sites)  # warm-up: lazy imports may read files
    with io_events() as events:
        first = ENGINE.render(GOLDEN_NODE, sites)
        again = ENGINE.render(GOLDEN_NODE, list(reversed(sites)))
    assert events == []
    assert first == again


def test_every_file_starts_with_the_header_naming_site_owner_and_version():
    rendered = ENGINE.render(GOLDEN_NODE, golden_sites())
    for path, text in rendered.files.items():
        assert text.startswith("# Managed by Reverse Proxy Control Center"), path
    shop = rendered.files["sites/shop.example.com.caddy"]
    assert "# site shop.example.com (id 2), owner 10, config version 7\n" in shop


def test_sites_sharing_a_certificate_load_it_from_the_same_files():
    """Caddy keeps one copy of identical certificates; separate copies per site
    would leave the second site without a certificate in TLS handshakes."""
    rendered = ENGINE.render(GOLDEN_NODE, golden_sites())
    tls_files = sorted(p for p in rendered.files if p.startswith("tls/"))
    assert len(tls_files) == 2  # shop and intranet share FAKE_CERTIFICATE
    assert rendered.site_files[2] == ["sites/shop.example.com.caddy", *tls_files]
    assert rendered.site_files[3] == ["sites/intranet.example.org.caddy", *tls_files]
    chain, key = (rendered.node_path(p) for p in tls_files)
    for domain in ("shop.example.com", "intranet.example.org"):
        assert f'\ttls "{chain}" "{key}"\n' in rendered.files[f"sites/{domain}.caddy"]
    assert rendered.files[tls_files[1]].endswith(FAKE_CERTIFICATE.key_pem)


def test_main_file_imports_each_site_once_and_options_turn_off_automatic_https():
    rendered = ENGINE.render(GOLDEN_NODE, batch_sites(12))
    imports = re.findall(r'^import "([^"]+)"$', rendered.files["rpcc.caddy"], re.M)
    assert sorted(imports) == sorted(
        rendered.node_path(p) for p in rendered.files if p.startswith("sites/"))
    assert rendered.files["options.caddy"].splitlines()[-1] == "auto_https off"
    assert rendered.include_line.splitlines() == [
        "{", '\timport "/etc/caddy/rpcc.d/options.caddy"', "}",
        'import "/etc/caddy/rpcc.d/rpcc.caddy"']


def _blocks(text: str) -> list[str]:
    """The top-level site blocks of a site file (each starts at column 0 with a quote)."""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith('"'):
            blocks.append([])
        if blocks and line:
            blocks[-1].append(line)
    return ["\n".join(block) for block in blocks]


def test_acme_challenge_comes_before_every_rule_on_every_listener():
    for site in golden_sites():
        text = ENGINE.render(GOLDEN_NODE, [site]).files[f"sites/{site.domain}.caddy"]
        for block in _blocks(text):
            challenge = block.index("handle /.well-known/acme-challenge/*")
            webroot = block.index('root * "/etc/caddy/rpcc.d-acme"')
            rest = block.index("\thandle {")
            assert challenge < webroot < rest
            assert not re.search(r"basicauth|remote_ip|redir|respond", block[:rest])


def test_every_site_address_is_http_unless_a_certificate_is_supplied():
    without_cert = dataclasses.replace(golden_sites()[1], certificate=None)
    text = ENGINE.render(GOLDEN_NODE, [without_cert]).files["sites/shop.example.com.caddy"]
    assert "redir" not in text and "reverse_proxy" in text  # no TLS yet: serve over HTTP
    assert not re.search(r"^\ttls ", text, re.M)
    assert set(re.findall(r'"(\w+)://[^"]+:(\d+)"', text)) == {("http", "80")}


def test_force_https_redirects_everything_but_the_challenge_and_hsts_is_tls_only():
    text = ENGINE.render(GOLDEN_NODE, golden_sites()).files["sites/shop.example.com.caddy"]
    plain, secure = _blocks(text)
    assert "redir https://{host}{uri} 308" in plain
    assert "reverse_proxy" not in plain and "Strict-Transport-Security" not in plain
    assert '"Strict-Transport-Security" "max-age=31536000"' in secure
    other_port = dataclasses.replace(GOLDEN_NODE, https_port=8443)
    text = ENGINE.render(other_port, golden_sites()).files["sites/shop.example.com.caddy"]
    assert "redir https://{host}:8443{uri} 308" in text


def test_basic_auth_hashes_are_base64_of_the_bcrypt_hash():
    text = ENGINE.render(GOLDEN_NODE, golden_sites()).files["sites/intranet.example.org.caddy"]
    pairs = re.findall(r'^\t+"([\w.-]+)" "([A-Za-z0-9+/=]+)"$', text, re.M)
    decoded = {user: base64.b64decode(value).decode() for user, value in pairs}
    assert decoded == {"alice": HASH_1, "bob.smith": HASH_2}


def test_blocked_site_answers_451_and_never_proxies():
    text = ENGINE.render(GOLDEN_NODE, golden_sites()).files["sites/blocked.example.net.caddy"]
    assert 'respond "This site is blocked: Abuse report #4711 (phishing)" 451' in text
    assert "reverse_proxy" not in text and "basicauth" not in text


def test_bind_only_when_the_node_has_a_listen_address():
    unbound = dataclasses.replace(GOLDEN_NODE, listen_address=None)
    assert "bind" not in ENGINE.render(unbound, golden_sites()).files[
        "sites/plain.example.com.caddy"]
    ipv6 = dataclasses.replace(GOLDEN_NODE, listen_address="2001:db8::10")
    assert '\tbind "2001:db8::10"\n' in ENGINE.render(ipv6, golden_sites()).files[
        "sites/plain.example.com.caddy"]


# --- honesty about capabilities --------------------------------------------------

CADDY_REFUSES = {Capability.WEIGHTS, Capability.WAF, Capability.CACHE, Capability.GEO,
                 Capability.RATE_LIMIT}


def test_every_capability_has_a_setting_site():
    assert set(SETTING_SITES) == Capability.ALL - {Capability.HTTP2}


@pytest.mark.parametrize("setting", sorted(SETTING_SITES))
def test_caddy_refuses_exactly_what_stock_caddy_26_cannot_do(setting):
    site = setting_site(setting)
    refused = ENGINE.missing_capabilities(site)
    assert refused == ({setting} & CADDY_REFUSES)
    if refused:
        with pytest.raises(ValueError, match="caddy cannot honour"):
            ENGINE.render(GOLDEN_NODE, [site])
    else:
        ENGINE.render(GOLDEN_NODE, [site])


def test_the_capability_set_is_everything_but_the_refused_settings():
    assert ENGINE.capabilities == Capability.ALL - CADDY_REFUSES


# --- values that could change the Caddyfile's structure ---------------------------

@pytest.mark.parametrize("value", ['a"b', "a\\b", "{env.HOME}", "a}b", "a\nb", "a\rb",
                                   "nul\x00", "tab\t", "del\x7f", "$HOME", "{$HOME}", "é"])
def test_quote_refuses_what_the_lexer_or_placeholders_would_read(value):
    with pytest.raises(ValueError):
        quote(value)


def test_quote_wraps_safe_text_verbatim():
    assert quote("default-src self; img-src *") == '"default-src self; img-src *"'
    assert quote("") == '""'


def _unsafe(value: str) -> bool:
    return any(ch in FORBIDDEN or not 0x20 <= ord(ch) <= 0x7e for ch in value)


HOSTILE = sorted(set(INJECTION_STRINGS + HEADER_VALUES))
# Each field a user controls, set to the hostile value on an otherwise valid site.
HOSTILE_FIELDS = {
    "domain": lambda v: {"domain": v},
    "alias": lambda v: {"aliases": (v,)},
    "backend host": lambda v: {"backends": (BackendSpec(v, 80),)},
    "header name": lambda v: {"headers": ((v, "1"),)},
    "header value": lambda v: {"headers": (("X-Test", v),)},
    "block reason": lambda v: {"blocked": True, "blocked_reason": v},
    "ip rule": lambda v: {"ip_deny": (v,)},
    "basic auth user": lambda v: {"basic_auth": ((v, HASH_1),)},
}


@pytest.mark.parametrize("field", sorted(HOSTILE_FIELDS))
@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_never_reach_a_caddyfile_unquoted(field, value):
    fields = {"backends": (BackendSpec("10.0.0.1", 80),), **HOSTILE_FIELDS[field](value)}
    site = SiteSpec(**{"id": 9, "owner_id": 9, "domain": "victim.example.com", **fields})
    if _unsafe(value):
        with pytest.raises(ValueError):
            ENGINE.render(GOLDEN_NODE, [site])
        return
    try:
        files = ENGINE.render(GOLDEN_NODE, [site]).files
    except ValueError:
        return  # refused for another reason (a server name that is not a host name)
    for path, text in files.items():
        assert ".." not in path.split("/") and not path.startswith("/"), path
        for line in text.splitlines():
            if value in line and not line.startswith("#"):
                # A safe value only ever appears inside one double-quoted token.
                assert re.search(r'"[^"]*' + re.escape(value) + r'[^"]*"', line), line


def test_server_names_must_be_host_names():
    for name in ["../../etc/passwd", "example.com/admin", "a b.example.com", "example.com:81"]:
        site = SiteSpec(id=9, owner_id=9, domain="victim.example.com", aliases=(name,))
        with pytest.raises(ValueError):
            ENGINE.render(GOLDEN_NODE, [site])


@pytest.mark.parametrize("node_field,value", [
    ("listen_address", '10.0.0.1" {'), ("log_dir", "/var/log/{env.X}"),
    ("config_dir", "/etc/caddy/$dir"), ("log_dir", "/var/log\nimport /etc/passwd"),
])
def test_hostile_node_values_are_refused_too(node_field, value):
    node = dataclasses.replace(GOLDEN_NODE, **{node_field: value})
    with pytest.raises(ValueError):
        ENGINE.render(node, golden_sites())


def test_a_253_character_domain_still_fits_the_file_system():
    long_domain = ".".join(["a" * 62] * 4) + ".i"
    assert len(long_domain) == 253
    site = SiteSpec(id=77, owner_id=1, domain=long_domain,
                    backends=(BackendSpec("127.0.0.1", 8080),))
    node = NodeSpec(name="c", proxy_type="caddy", config_dir="/etc/caddy/rpcc.d",
                    test_command="caddy validate", reload_command="caddy reload")
    rendered = ENGINE.render(node, [site])
    names = [path.rsplit("/", 1)[-1] for path in rendered.files]
    assert all(len(name.encode()) <= 255 for name in names)
    logs = re.findall(r"output file \"?([^\s\"]+)", "".join(rendered.files.values()))
    assert logs and all(len(log.rsplit("/", 1)[-1]) <= 255 for log in logs)
