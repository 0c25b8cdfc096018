"""Keeping one site's bad version from breaking the pool's other sites.

A node tests its whole configuration at once: one site whose backend name does not
resolve, or whose settings the proxy rejects, makes ``nginx -t`` refuse every
tenant's change.  When that happens the deployment finds the sites to blame and sets
them aside: each is rendered at the last version every node took (or left out when it
never had one), its owner is told why, and the rest of the pool deploys.

Pure functions: finding the culprits from what the node printed (the file and line
it names), a bisection over the suspects when it names none, the owner's sentence,
and the accepted settings kept as JSON.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from typing import Any

from app.engines.base import BackendSpec, CertificateSpec, SiteSpec

# How many times one node's deployment sets sites aside and tries again, and how many
# test-only runs a bisection may spend, before it gives up and fails as before.
MAX_ROUNDS = 3
MAX_BISECT_TESTS = 12
# How many of the sites a bisection found get one more test run, alone, so that their
# owners read the proxy's words about their own site.
MAX_EXPLAINED = 3

# "in /etc/nginx/rpcc/upstreams.conf:12" (nginx) or "at /etc/caddy/rpcc/x.caddy:5"
# (Caddy), or any absolute path followed by a line number.
_LOCATION = re.compile(r"(/[^\s:'\"()\[\],]+):(\d+)")
_ABSOLUTE_PATH = re.compile(r"(?<![\w.])/[^\s'\"()\[\],]*")
_TOKEN = re.compile(r"[\w.*-]+")
_IMPORT_CHAIN = re.compile(r",?\s*import chain \[[^\]]*\]")


def spec_to_json(spec: SiteSpec) -> dict[str, Any]:
    """The settings a node accepted, without the certificate: the certificate in
    force is taken when the site is rendered, and its key never lands here."""
    return {
        "id": spec.id, "owner_id": spec.owner_id, "domain": spec.domain,
        "aliases": list(spec.aliases),
        "backends": [[b.host, b.port, b.weight] for b in spec.backends],
        "backend_protocol": spec.backend_protocol, "ssl_mode": spec.ssl_mode,
        "force_https": spec.force_https, "hsts": spec.hsts, "http2": spec.http2,
        "websocket": spec.websocket, "waf_level": spec.waf_level,
        "cache_enabled": spec.cache_enabled, "cache_ttl": spec.cache_ttl,
        "geo_mode": spec.geo_mode, "geo_countries": list(spec.geo_countries),
        "ip_allow": list(spec.ip_allow), "ip_deny": list(spec.ip_deny),
        "basic_auth": [list(pair) for pair in spec.basic_auth],
        "rate_limit_rps": spec.rate_limit_rps, "rate_limit_burst": spec.rate_limit_burst,
        "headers": [list(pair) for pair in spec.headers],
        "blocked": spec.blocked, "blocked_reason": spec.blocked_reason,
        "config_version": spec.config_version,
    }


def spec_from_json(data: dict[str, Any], certificate: CertificateSpec | None) -> SiteSpec:
    return SiteSpec(
        id=data["id"], owner_id=data["owner_id"], domain=data["domain"],
        aliases=tuple(data["aliases"]),
        backends=tuple(BackendSpec(host, port, weight) for host, port, weight in data["backends"]),
        backend_protocol=data["backend_protocol"], ssl_mode=data["ssl_mode"],
        force_https=data["force_https"], hsts=data["hsts"], http2=data["http2"],
        websocket=data["websocket"], waf_level=data["waf_level"],
        cache_enabled=data["cache_enabled"], cache_ttl=data["cache_ttl"],
        geo_mode=data["geo_mode"], geo_countries=tuple(data["geo_countries"]),
        ip_allow=tuple(data["ip_allow"]), ip_deny=tuple(data["ip_deny"]),
        basic_auth=tuple((user, hashed) for user, hashed in data["basic_auth"]),
        rate_limit_rps=data["rate_limit_rps"], rate_limit_burst=data["rate_limit_burst"],
        headers=tuple((name, value) for name, value in data["headers"]),
        blocked=data["blocked"], blocked_reason=data["blocked_reason"],
        config_version=data["config_version"], certificate=certificate,
    )


def blamed_sites(output: str, config_dir: str, files: dict[str, str],
                 site_files: dict[int, list[str]], domains: dict[int, str],
                 suspects: Collection[int]) -> dict[int, str]:
    """The suspects the node's complaint points at (a file of the site's own, or a
    line of a shared file such as upstreams or zones, in the block that names the
    site's domain), each with the line of the complaint that names it: only that
    line may be shown to the site's owner, the rest may be about other sites.  Empty
    when the complaint names no such place."""
    base = config_dir.rstrip("/") + "/"
    owner = {path: site_id for site_id, paths in site_files.items() for path in paths}
    blamed: dict[int, str] = {}
    for complaint in output.splitlines():
        for path, line in _LOCATION.findall(complaint):
            if not path.startswith(base):
                continue
            relative = path[len(base):]
            site_id = owner.get(relative)
            if site_id is None and relative in files:
                site_id = _site_above(files[relative], int(line), domains, suspects)
            if site_id is not None and site_id in suspects:
                blamed.setdefault(site_id, complaint)
    return blamed


def _site_above(text: str, line: int, domains: dict[int, str],
                suspects: Collection[int]) -> int | None:
    """The site whose domain the shared file names in a comment on that line or
    nearest above it (every per-site block of a shared file carries its site's
    domain in a comment), if a suspect.  Only comments count: a backend named like
    a neighbour's domain must not put the blame on the neighbour."""
    by_domain = {domain: site_id for site_id, domain in domains.items()}
    lines = text.splitlines()
    for number in range(min(line, len(lines)) - 1, -1, -1):
        _, _, comment = lines[number].partition("#")
        for token in _TOKEN.findall(comment):
            site_id = by_domain.get(token.rstrip("."))
            if site_id is not None:
                return site_id if site_id in suspects else None
    return None


def isolate(suspects: Iterable[int], passes: Callable[[set[int]], bool],
            budget: int | None = None) -> set[int]:
    """The suspects to set aside so that the node's test passes, found by halving:
    ``passes(aside)`` asks the node to test the configuration with ``aside`` set
    aside.  Empty when setting every suspect aside does not help (the fault is not a
    site's) or when the budget of test runs is spent first."""
    spent = 0
    budget = MAX_BISECT_TESTS if budget is None else budget

    def ask(aside: set[int]) -> bool:
        nonlocal spent
        spent += 1
        return passes(aside)

    everyone = sorted(set(suspects))
    if not everyone or not ask(set(everyone)):
        return set()
    culprits: set[int] = set()
    while True:
        # Invariant: setting aside culprits and candidates passes; culprits alone fail.
        candidates = [s for s in everyone if s not in culprits]
        kept_aside = set(culprits)
        while len(candidates) > 1:
            if spent >= budget:
                return set()
            half = candidates[:len(candidates) // 2]
            if ask(kept_aside | set(half)):
                candidates = half
            else:
                kept_aside |= set(half)
                candidates = candidates[len(half):]
        culprits.add(candidates[0])
        if spent >= budget:
            return set()
        if ask(culprits):
            return culprits


# For sites set aside when the node refused several changes at once without saying
# which, and the bisection ran out of test runs.
UNTOLD = ("A proxy node refused a set of changes that included this version of the site "
          "and did not say which one was at fault, so the previous version stays live (a "
          "new site stays offline). Deploy the site on its own to try it again.")


def owner_reason(output: str, node_addresses: Iterable[str] = ()) -> str:
    """What the node said, as a sentence the site's owner can act on: the proxy's
    first complaint without the node's paths, line numbers or addresses."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    complaint = next((line for line in lines if "[emerg]" in line or "Error:" in line
                      or "error" in line.lower()), lines[0] if lines else "")
    complaint = _IMPORT_CHAIN.sub("", complaint)
    for marker in ("[emerg]", "[alert]", "[crit]", "Error:"):
        # What precedes the proxy's own words: our step's preamble, "nginx:".
        if marker in complaint:
            complaint = complaint.split(marker, 1)[1]
            break
    complaint = re.sub(r"\s+(?:in|at)\s+/\S+:\d+", "", complaint)
    complaint = _ABSOLUTE_PATH.sub("…", complaint)
    for address in node_addresses:
        if address:
            complaint = complaint.replace(address, "the node")
    complaint = complaint.strip(" .;,")[:300]
    said = f": {complaint}" if complaint else ""
    return (f"A proxy node refused this version of the site{said}. The previous version "
            f"stays live (a new site stays offline). Correct the site's settings, or its "
            f"backend names, and deploy it again.")
