"""Rendering speed of the nginx and Caddy engines, and what the real ``nginx -t``
costs on a large node.

Renders a realistic mix of 10,000 sites (plain, TLS with HSTS, WAF, cache, rate
limit, basic auth, country rules) with each engine, best of a few runs, and prints
sites per second against the 10,000 sites/s goal; Caddy renders the same sites with
the settings it cannot honour turned off, as a pool's capability check would demand.
Then writes a node of 1,000 and of 10,000 of those sites with ModSecurity and GeoIP2
loaded and times ``nginx -t`` on it.

    .venv/bin/python bench/render.py [--sites 10000] [--runs 5] [--nginx-t 1000,10000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from app.engines.base import BackendSpec, CertificateSpec, NodeSpec, SiteSpec  # noqa: E402
from app.engines.caddy import ENGINE as CADDY  # noqa: E402
from app.engines.nginx import ENGINE as NGINX  # noqa: E402
from app.engines.traefik import ENGINE as TRAEFIK  # noqa: E402
from tests.nginx_node import (  # noqa: E402
    BASE_OPEN_FILES,
    GOLDEN_HASH,
    NginxPrefix,
    allow_open_files,
    self_signed,
)

GOAL = 10_000  # sites per second

# One kind of site per entry, repeated in proportion to its weight (out of 20).
MIX: list[tuple[int, Callable[[CertificateSpec], dict[str, Any]]]] = [
    (8, lambda cert: {}),
    (5, lambda cert: {"ssl_mode": "letsencrypt", "certificate": cert, "force_https": True,
                      "hsts": True, "headers": (("X-Frame-Options", "DENY"),)}),
    (2, lambda cert: {"waf_level": "medium"}),
    (2, lambda cert: {"cache_enabled": True, "cache_ttl": 600, "websocket": True}),
    (1, lambda cert: {"rate_limit_rps": 50, "rate_limit_burst": 100,
                      "ip_deny": ("203.0.113.0/24",)}),
    (1, lambda cert: {"basic_auth": (("staff", GOLDEN_HASH),), "ip_allow": ("10.0.0.0/8",)}),
    (1, lambda cert: {"geo_mode": "deny", "geo_countries": ("KP", "IR")}),
]
# What Caddy cannot honour (its engine's capabilities say so): turned off for its run.
CADDY_OFF = {"waf_level": "off", "cache_enabled": False, "rate_limit_rps": None,
             "rate_limit_burst": 0, "geo_mode": "off", "geo_countries": ()}


def sites(count: int, certificate: CertificateSpec) -> list[SiteSpec]:
    kinds = [make for weight, make in MIX for _ in range(weight)]
    return [
        SiteSpec(id=i, owner_id=1 + i % 200, domain=f"site{i}.example.com",
                 aliases=(f"www.site{i}.example.com",),
                 backends=(BackendSpec(f"10.{i // 250 % 250}.{i % 250}.10", 8080),
                           BackendSpec(f"10.{i // 250 % 250}.{i % 250}.11", 8080)),
                 config_version=1 + i % 7, **kinds[i % len(kinds)](certificate))
        for i in range(1, count + 1)
    ]


def node_spec(engine: str) -> NodeSpec:
    return NodeSpec(name="bench", proxy_type=engine, config_dir=f"/etc/{engine}/rpcc",
                    test_command=f"{engine} -t", reload_command=f"{engine} -s reload",
                    listen_address="192.0.2.1")


def render_rate(render: Callable[[], object], count: int, runs: int) -> float:
    """Sites per second of the best run (the others carry warm-up and GC noise)."""
    best = min(_timed(render) for _ in range(runs))
    return count / best


def _timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def nginx_t_seconds(node_sites: list[SiteSpec]) -> tuple[float, float]:
    """(seconds to write the files, seconds of ``nginx -t``) on a fresh node."""
    prefix = NginxPrefix()
    try:
        prefix.use_geoip({"127.0.0.0/8": "US"})
        rendered = NGINX.render(prefix.spec, node_sites)
        write = _timed(lambda: prefix.write(rendered))
        start = time.perf_counter()
        result = prefix.run_test(rendered)
        check = time.perf_counter() - start
        if result.returncode != 0 or "[warn]" in result.stderr:
            raise SystemExit(f"nginx -t failed on {len(node_sites)} sites:\n{result.stderr}")
        return write, check
    finally:
        prefix.remove()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sites", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--nginx-t", default="1000,10000",
                        help="comma-separated node sizes for nginx -t")
    args = parser.parse_args()
    certificate = self_signed([f"site{i}.example.com" for i in range(1, 4)])
    mixed = sites(args.sites, certificate)
    for_caddy = [replace(site, **CADDY_OFF) for site in mixed]
    assert not any(CADDY.missing_capabilities(site) for site in for_caddy)

    rates = {
        "nginx": render_rate(lambda: NGINX.render(node_spec("nginx"), mixed),
                             args.sites, args.runs),
        "caddy": render_rate(lambda: CADDY.render(node_spec("caddy"), for_caddy),
                             args.sites, args.runs),
    }
    print(f"render {args.sites:,} sites, best of {args.runs} (goal {GOAL:,} sites/s)")
    print(f"  {'engine':<8}{'sites/s':>10}{'ms/site':>10}{'x goal':>8}")
    for engine, rate in rates.items():
        print(f"  {engine:<8}{rate:>10,.0f}{1000 / rate:>10.3f}{rate / GOAL:>8.2f}")
    print(f"  nginx / caddy speed ratio: {rates['nginx'] / rates['caddy']:.2f}")

    print("Traefik, one site with a long IP deny list (cost should grow with the list)")
    print(f"  {'deny /24s':>10}{'ms':>10}{'ms per 100':>12}")
    for size in (250, 1000, 4000):
        deny = tuple(f"{10 + i // 256}.{i % 256}.7.0/24" for i in range(size))
        site = replace(mixed[0], ip_deny=deny, ip_allow=())
        seconds = _timed(lambda site=site: TRAEFIK.render(node_spec("traefik"), [site]))
        print(f"  {size:>10,}{seconds * 1000:>10.1f}{seconds * 1000 / size * 100:>12.2f}")

    print("nginx -t (nginx 1.22, ModSecurity CRS and GeoIP2 loaded)")
    print(f"  {'sites':>8}{'files':>8}{'write s':>10}{'nginx -t s':>12}")
    for size in (int(n) for n in args.nginx_t.split(",")):
        needed = BASE_OPEN_FILES + 2 * size
        limit = allow_open_files(needed)
        if limit < needed:
            # The master holds two log files per site open; without CAP_SYS_RESOURCE
            # the hard limit cannot be raised, so measure the largest node that fits.
            feasible = (limit - BASE_OPEN_FILES) // 2 // 100 * 100
            print(f"  {size:>8,}  not measurable here: needs {needed:,} open files, the hard "
                  f"limit is {limit:,}; measuring {feasible:,} sites instead")
            size = feasible
        node_sites = sites(size, certificate)
        files = len(NGINX.render(node_spec("nginx"), node_sites).files)
        write, check = nginx_t_seconds(node_sites)
        print(f"  {size:>8,}{files:>8,}{write:>10.1f}{check:>12.2f}")


if __name__ == "__main__":
    main()
