"""The Traefik renderer as a pure function.  Traefik is not installed here, so besides
golden files the tests check what Traefik would check: every reference resolves
within the node's file set, names do not collide across files, rules match exactly
the site's names, and IP rules mean what the site says."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from app.engines import get_engine
from app.engines.base import BackendSpec, Capability, NodeSpec, RenderedConfig, SiteSpec
from app.engines.traefik import ENGINE, EXACT_PRIORITY, WILDCARD_PRIORITY, allowed_ranges, host_rule
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
    name="edge-traefik-1", proxy_type="traefik", config_dir="/etc/traefik/dynamic",
    test_command="traefik version", reload_command="true",
)
TRAEFIK_REFUSES = {Capability.WAF, Capability.CACHE, Capability.GEO, Capability.BLOCK}


def golden_sites() -> list[SiteSpec]:
    """Plain, TLS with weights and everything, protected, rate-limited API."""
    return [
        SiteSpec(id=1, owner_id=10, domain="plain.example.com",
                 backends=(BackendSpec("10.0.0.11", 8080),)),
        SiteSpec(id=2, owner_id=10, domain="shop.example.com",
                 aliases=("www.shop.example.com", "*.cdn.shop.example.com"),
                 backends=(BackendSpec("10.0.0.21", 8443, 3),
                           BackendSpec("2001:db8::21", 8443, 1)),
                 backend_protocol="https", ssl_mode="custom", force_https=True, hsts=True,
                 websocket=True, certificate=FAKE_CERTIFICATE, config_version=7,
                 headers=(("X-Frame-Options", "DENY"),
                          ("Content-Security-Policy", "frame-ancestors none"))),
        SiteSpec(id=3, owner_id=11, domain="intranet.example.org",
                 backends=(BackendSpec("intranet-app.internal", 3000),),
                 ssl_mode="self_signed", certificate=FAKE_CERTIFICATE, hsts=True,
                 ip_allow=("10.0.0.0/8", "2001:db8::/32"), ip_deny=("10.66.0.0/16",),
                 basic_auth=(("alice", HASH_1), ("bob.smith", HASH_2)),
                 headers=(("X-Robots-Tag", "noindex, nofollow"),)),
        SiteSpec(id=4, owner_id=12, domain="api.example.net",
                 backends=tuple(BackendSpec(f"10.0.0.{n}", 9000, 2) for n in (41, 42, 43)),
                 ip_deny=("192.0.2.0/24",), rate_limit_rps=20, rate_limit_burst=0),
    ]


def batch_sites(count: int) -> list[SiteSpec]:
    """Many sites mixing every supported setting, as a busy node would carry."""
    sites = []
    for n in range(count):
        tls = n % 3 == 0
        sites.append(SiteSpec(
            id=100 + n, owner_id=n % 7, domain=f"site{n}.example.com",
            aliases=(f"www.site{n}.example.com",) + ((f"*.apps{n}.example.com",) if n % 5 == 0
                                                      else ()),
            backends=tuple(BackendSpec(f"10.1.{n % 250}.{k + 1}", 8000 + k, 1 + (k * n) % 4)
                           for k in range(1 + n % 3)),
            backend_protocol="https" if n % 4 == 0 else "http",
            ssl_mode="letsencrypt" if tls else "none",
            certificate=FAKE_CERTIFICATE if tls else None,
            force_https=tls and n % 2 == 0, hsts=tls,
            ip_allow=("10.0.0.0/8",) if n % 6 == 1 else (),
            ip_deny=(f"10.9.{n % 250}.0/24",) if n % 4 == 1 else (),
            basic_auth=(("user", HASH_1),) if n % 5 == 2 else (),
            rate_limit_rps=5 + n if n % 7 == 0 else None, rate_limit_burst=n % 10,
            headers=(("X-Site", f"site {n}"),) if n % 2 else (),
        ))
    return sites


def test_registry_returns_the_traefik_engine():
    assert get_engine("traefik") is ENGINE


def test_golden_files():
    rendered = ENGINE.render(GOLDEN_NODE, golden_sites())
    compare_golden("traefik", {**rendered.files, "include_line.txt": rendered.include_line + "\n"})


def test_include_line_is_the_file_provider_flag():
    assert ENGINE.include_line(GOLDEN_NODE) == "--providers.file.directory=/etc/traefik/dynamic"


def test_rendering_is_pure_and_deterministic():
    sites = golden_sites() + batch_sites(40)
    ENGINE.render(GOLDEN_NODE, sites)  # warm-up: lazy imports may read files
    with io_events() as events:
        first = ENGINE.render(GOLDEN_NODE, sites)
        again = ENGINE.render(GOLDEN_NODE, list(reversed(sites)))
    assert events == []
    assert first == again


# --- what Traefik would check on load ----------------------------------------------

def merged(rendered: RenderedConfig) -> dict[str, Any]:
    """The file provider's view: every YAML file merged, refusing duplicate names
    (Traefik would keep the first and skip the rest)."""
    view: dict[str, dict[str, Any]] = {
        "routers": {}, "services": {}, "middlewares": {}, "serversTransports": {}}
    certificates = []
    for path, text in rendered.files.items():
        if not path.endswith(".yml"):
            continue
        document = yaml.safe_load(text)
        assert set(document) <= {"http", "tls"}, path
        for section, entries in document["http"].items():
            for name, entry in entries.items():
                assert name not in view[section], f"{section} {name} defined twice"
                view[section][name] = entry
        certificates += document.get("tls", {}).get("certificates", [])
    return {**view, "certificates": certificates}


def rule_names(rule: str) -> set[str]:
    """The host names a rule matches, read back from its two matcher forms."""
    names = set()
    for matcher in rule.split(" || "):
        host = re.fullmatch(r"Host\(`([a-z0-9.-]+)`\)", matcher)
        wildcard = re.fullmatch(r"HostRegexp\(`\^\[a-z0-9-\]\+\\\.([a-z0-9\\.-]+)\$`\)",
                                matcher)
        if host:
            names.add(host.group(1))
        else:
            assert wildcard, matcher
            names.add("*." + wildcard.group(1).replace("\\.", "."))
    return names


@pytest.mark.parametrize("sites", [golden_sites(), batch_sites(120)], ids=["golden", "batch"])
def test_every_reference_resolves_within_the_file_set(sites):
    rendered = ENGINE.render(GOLDEN_NODE, sites)
    view = merged(rendered)
    by_prefix = {f"rpcc-{site.id}": site for site in sites}
    names_by_site: dict[str, set[str]] = {}
    for name, router in view["routers"].items():
        prefix = re.sub(r"-web(secure)?(-wildcard)?$", "", name)
        assert prefix in by_prefix, name
        assert router["service"] in view["services"], name
        for middleware in router.get("middlewares", []):
            assert middleware in view["middlewares"], (name, middleware)
        assert router["entryPoints"] in (["web"], ["websecure"])
        assert ("tls" in router) == (router["entryPoints"] == ["websecure"])
        wildcard = name.endswith("-wildcard")
        assert router["priority"] == (WILDCARD_PRIORITY if wildcard else EXACT_PRIORITY)
        assert all(n.startswith("*.") == wildcard for n in rule_names(router["rule"])), name
        names_by_site.setdefault(f"{prefix}-{router['entryPoints'][0]}", set()).update(
            rule_names(router["rule"]))
    for key, names in names_by_site.items():
        assert names == set(by_prefix[key.rsplit("-", 1)[0]].server_names), key
    for name, service in view["services"].items():
        for child in service.get("weighted", {}).get("services", []):
            assert child["name"] in view["services"], name
        transport = service.get("loadBalancer", {}).get("serversTransport")
        assert transport is None or transport in view["serversTransports"], name
    for certificate in view["certificates"]:
        for key in ("certFile", "keyFile"):
            relative = certificate[key].removeprefix(GOLDEN_NODE.config_dir + "/")
            assert relative in rendered.files, certificate[key]
    assert set(rendered.site_files) == {site.id for site in sites}
    assert sorted(p for files in rendered.site_files.values() for p in files) == sorted(
        rendered.files)


def test_tls_site_gets_a_websecure_router_with_hsts_and_a_redirect_on_web():
    view = merged(ENGINE.render(dataclasses.replace(GOLDEN_NODE, https_port=8443),
                                golden_sites()))
    web, secure = view["routers"]["rpcc-2-web"], view["routers"]["rpcc-2-websecure"]
    assert web["middlewares"] == ["rpcc-2-redirect"]
    assert view["middlewares"]["rpcc-2-redirect"] == {
        "redirectScheme": {"scheme": "https", "permanent": True, "port": "8443"}}
    assert secure["middlewares"][0] == "rpcc-2-hsts"
    assert view["middlewares"]["rpcc-2-hsts"] == {"headers": {"stsSeconds": 31536000}}
    assert "rpcc-1-websecure" not in view["routers"]  # no certificate, no TLS router


def test_weights_become_a_weighted_service_and_equal_weights_a_load_balancer():
    view = merged(ENGINE.render(GOLDEN_NODE, golden_sites()))
    assert view["services"]["rpcc-2"] == {"weighted": {"services": [
        {"name": "rpcc-2-backend-1", "weight": 3}, {"name": "rpcc-2-backend-2", "weight": 1}]}}
    assert view["services"]["rpcc-2-backend-2"]["loadBalancer"]["servers"] == [
        {"url": "https://[2001:db8::21]:8443"}]
    assert view["serversTransports"]["rpcc-2"] == {"serverName": "shop.example.com",
                                                   "insecureSkipVerify": True}
    api = view["services"]["rpcc-4"]["loadBalancer"]["servers"]
    assert api == [{"url": f"http://10.0.0.{n}:9000"} for n in (41, 42, 43)]


def test_basic_auth_and_rate_limit_are_native_middlewares():
    view = merged(ENGINE.render(GOLDEN_NODE, golden_sites()))
    assert view["middlewares"]["rpcc-3-auth"] == {
        "basicAuth": {"users": [f"alice:{HASH_1}", f"bob.smith:{HASH_2}"]}}
    # Traefik raises a burst below 1 to 1; the file says so.
    assert view["middlewares"]["rpcc-4-ratelimit"] == {"rateLimit": {"average": 20, "burst": 1}}


# --- IP rules: deny lists as allow lists --------------------------------------------

def admits(ranges: list[str], address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in ipaddress.ip_network(r) for r in ranges)


def test_allowed_ranges_examples():
    assert allowed_ranges((), ()) == ["0.0.0.0/0", "::/0"]
    assert allowed_ranges(("10.0.0.0/8",), ("10.66.0.0/16",))[:2] == ["10.0.0.0/10",
                                                                     "10.64.0.0/15"]
    assert allowed_ranges((), ("0.0.0.0/0", "::/0")) == ["0.0.0.0/32"]  # nobody
    assert allowed_ranges(("10.1.0.0/16",), ("10.0.0.0/8",)) == ["0.0.0.0/32"]


def _edges(cidr: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """First and last address of a network and their outside neighbours."""
    net = ipaddress.ip_network(cidr)
    first, last = int(net.network_address), int(net.broadcast_address)
    address = type(net.network_address)
    return [address(n) for n in (first - 1, first, last, last + 1)
            if 0 <= n < 2**net.max_prefixlen]


networks_v4 = st.builds(
    lambda address, prefix: str(ipaddress.ip_network((address, prefix), strict=False)),
    st.integers(0, 2**32 - 1), st.integers(0, 32))
networks_v6 = st.builds(
    lambda address, prefix: str(ipaddress.ip_network((address, prefix), strict=False)),
    st.integers(0, 2**128 - 1), st.integers(0, 128))
networks = st.one_of(networks_v4, networks_v6)


@given(allow=st.lists(networks, max_size=4), deny=st.lists(networks, max_size=4),
       probes=st.lists(st.one_of(st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
                                 st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)),
                       max_size=20))
def test_allowed_ranges_admit_exactly_the_allowed_and_not_denied(allow, deny, probes):
    ranges = allowed_ranges(tuple(allow), tuple(deny))
    # Probe the edges of every network too, where off-by-one mistakes live.
    edges = [ip for cidr in allow + deny for ip in _edges(cidr)]
    # The unspecified address is never a client's: "allow nobody" is written with it.
    for ip in (ip for ip in [*probes, *edges] if not ip.is_unspecified):
        in_allow = not allow or any(ip in ipaddress.ip_network(c) for c in allow)
        in_deny = any(ip in ipaddress.ip_network(c) for c in deny)
        assert admits(ranges, str(ip)) == (in_allow and not in_deny), (ip, ranges)


# --- honesty about capabilities --------------------------------------------------

@pytest.mark.parametrize("setting", sorted(SETTING_SITES))
def test_traefik_refuses_exactly_what_it_has_no_native_middleware_for(setting):
    site = setting_site(setting)
    refused = ENGINE.missing_capabilities(site)
    assert refused == ({setting} & TRAEFIK_REFUSES)
    if refused:
        with pytest.raises(ValueError, match="traefik cannot honour"):
            ENGINE.render(GOLDEN_NODE, [site])
    else:
        ENGINE.render(GOLDEN_NODE, [site])


def test_the_capability_set_is_everything_but_the_refused_settings():
    assert ENGINE.capabilities == Capability.ALL - TRAEFIK_REFUSES


# --- values that could change the configuration's meaning --------------------------

@pytest.mark.parametrize("name", ["a`) || Host(`evil.com", 'a"b.com', "a'b.com", "a\\b.com",
                                  "a b.com", "A.example.com", "a(b).com", "a..b.com",
                                  "example.com\n", "*.*.example.com", ""])
def test_host_rule_refuses_anything_but_host_names(name):
    with pytest.raises(ValueError):
        host_rule((name,))


def test_host_rule_joins_names_and_wildcards():
    assert host_rule(("a.example.com", "*.b.example.com")) == (
        "Host(`a.example.com`) || HostRegexp(`^[a-z0-9-]+\\.b\\.example\\.com$`)")


HOSTILE = sorted(set(INJECTION_STRINGS + HEADER_VALUES))
HOSTILE_FIELDS = {
    "domain": lambda v: {"domain": v},
    "alias": lambda v: {"aliases": (v,)},
    "backend host": lambda v: {"backends": (BackendSpec(v, 80),)},
    "header name": lambda v: {"headers": ((v, "1"),)},
    "header value": lambda v: {"headers": (("X-Test", v),)},
    "ip rule": lambda v: {"ip_deny": (v,)},
    "basic auth user": lambda v: {"basic_auth": ((v, HASH_1),)},
}


def _template_or_control(value: str) -> bool:
    return any(ch in "{}" or not 0x20 <= ord(ch) <= 0x7e for ch in value)


@pytest.mark.parametrize("field", sorted(HOSTILE_FIELDS))
@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_are_refused_or_stay_literal_text(field, value):
    fields = {"backends": (BackendSpec("10.0.0.1", 80),), **HOSTILE_FIELDS[field](value)}
    site = SiteSpec(**{"id": 9, "owner_id": 9, "domain": "victim.example.com", **fields})
    if _template_or_control(value):
        with pytest.raises(ValueError):
            ENGINE.render(GOLDEN_NODE, [site])
        return
    try:
        rendered = ENGINE.render(GOLDEN_NODE, [site])
    except ValueError:
        return  # refused: a name that is not a host name, or a backend that is not a host
    assert field not in {"domain", "alias", "backend host", "ip rule"} or re.fullmatch(
        r"(\*\.)?[a-z0-9.-]+", value)
    view = merged(rendered)
    middlewares = view["middlewares"]
    if field.startswith("header"):
        assert middlewares["rpcc-9-headers"]["headers"]["customResponseHeaders"] == dict(
            site.headers)
    if field == "basic auth user":
        assert middlewares["rpcc-9-auth"]["basicAuth"]["users"] == [f"{value}:{HASH_1}"]
    assert set(view["routers"]) in ({"rpcc-9-web"}, {"rpcc-9-web-wildcard"},
                                    {"rpcc-9-web", "rpcc-9-web-wildcard"})


def test_an_exact_name_outranks_every_wildcard_whatever_the_rule_lengths():
    # A neighbour's wildcard with a long rule must not take an exact name's traffic.
    exact = SiteSpec(id=1, owner_id=10, domain="shop.example.net",
                     backends=(BackendSpec("10.0.0.1", 80),))
    greedy = SiteSpec(id=2, owner_id=11, domain="a-very-long-name-for-a-wildcard.example.org",
                      aliases=("*.example.net",), backends=(BackendSpec("10.0.0.2", 80),))
    view = merged(ENGINE.render(GOLDEN_NODE, [exact, greedy]))
    routers = view["routers"]
    assert routers["rpcc-1-web"]["priority"] > routers["rpcc-2-web-wildcard"]["priority"]
    assert len(routers["rpcc-2-web-wildcard"]["rule"]) > len(routers["rpcc-1-web"]["rule"])
    assert rule_names(routers["rpcc-2-web-wildcard"]["rule"]) == {"*.example.net"}


def test_a_253_character_domain_still_names_files_the_file_system_accepts():
    from tests.nginx_node import long_domain

    domain = long_domain(253)
    site = SiteSpec(id=7, owner_id=10, domain=domain, backends=(BackendSpec("10.0.0.1", 80),))
    rendered = ENGINE.render(GOLDEN_NODE, [site])
    names = [path.rsplit("/", 1)[-1] for path in rendered.site_files[7]]
    assert names and all(len(name.encode()) <= 255 for name in names), names
    assert any(name.startswith(domain[:100]) for name in names)  # still tells whose it is
    assert rule_names(merged(rendered)["routers"]["rpcc-7-web"]["rule"]) == {domain}


@given(st.lists(st.integers(0, 2**32 - 1).flatmap(
           lambda a: st.integers(8, 32).map(lambda p: str(ipaddress.ip_network((a, p),
                                                                               strict=False)))),
                max_size=6),
       st.lists(st.integers(0, 2**32 - 1).flatmap(
           lambda a: st.integers(8, 32).map(lambda p: str(ipaddress.ip_network((a, p),
                                                                               strict=False)))),
                max_size=12),
       st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=20))
def test_allowed_ranges_admit_exactly_the_allowed_and_not_denied_addresses(allow, deny, probes):
    ranges = [ipaddress.ip_network(r) for r in allowed_ranges(tuple(allow), tuple(deny))]
    allowed = [ipaddress.ip_network(a) for a in allow] or [ipaddress.ip_network("0.0.0.0/0")]
    denied = [ipaddress.ip_network(d) for d in deny]
    edges = [int(n.network_address) for n in (*allowed, *denied)] + [
        int(n.broadcast_address) for n in (*allowed, *denied)]
    for value in [*probes, *edges]:
        if value == 0:
            continue  # 0.0.0.0 is no client's address: "allow only it" means nobody
        address = ipaddress.IPv4Address(value)
        expected = any(address in n for n in allowed) and not any(address in n for n in denied)
        assert any(address in r for r in ranges) == expected, (address, allow, deny)


def test_a_deny_list_of_2000_networks_is_subtracted_exactly():
    deny = tuple(f"{10 + i // 256}.{i % 256}.0.0/24" for i in range(2000))
    ranges = [ipaddress.ip_network(r) for r in allowed_ranges((), deny)]
    for i in range(0, 2000, 97):
        denied = ipaddress.ip_network(deny[i])
        assert not any(r.overlaps(denied) for r in ranges), denied
        neighbour = denied.network_address + 256  # the next /24 is not denied
        assert any(neighbour in r for r in ranges), neighbour
