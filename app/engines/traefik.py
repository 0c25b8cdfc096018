"""Traefik v3 engine: file-provider dynamic configuration, one YAML file per site.

The node's static configuration (read at start, never written by the control plane)
must provide:

* the file provider on the managed directory, which :meth:`TraefikEngine.include_line`
  returns as ``--providers.file.directory=<config_dir>`` (``watch`` stays on, its
  default, so a deployment applies without a restart; the provider also reads
  subdirectories, where the site files live);
* two entry points, by convention ``web`` on ``<listen_address>:<http_port>`` and
  ``websecure`` on ``<listen_address>:<https_port>``: routers name them, and the
  addresses belong to the static configuration.

Files, relative to ``config_dir``: ``sites/<domain>.yml`` (routers, services,
middlewares, servers transport and TLS certificate of one site) and
``tls/<domain>.crt`` / ``tls/<domain>.key``.  The file provider merges every file
into one namespace, so each name starts with ``rpcc-<site id>-``.

The YAML is built as Python data and written by ``yaml.safe_dump``, so no value can
change the document's structure.  Two things the dump cannot prevent are checked
here: router rules are a small language of their own (:func:`host_rule` builds them
from host names only), and the file provider runs every file through Go templates
(:func:`_check_scalars` refuses braces anywhere).

Not rendered, because stock Traefik has no native way: serving the ACME HTTP-01
challenge from files (Traefik nodes need the control plane's own challenge service,
or DNS-01), a block page with a status and a reason, a WAF, country rules, caching
and passive health checks.

Not read: the proxy's connections and requests (``Engine.status_endpoint`` is None).
Traefik's metrics and its API are static configuration, which the control plane does
not write, so the node metrics of a Traefik node carry no proxy figures.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Network, IPv6Network
from typing import Any

import yaml

from app.engines.base import (
    BackendSpec,
    Capability,
    CommandForms,
    FormEngine,
    NodeDefaults,
    NodeSpec,
    SiteSpec,
    file_header,
    file_stem,
)

WEB = "web"
WEBSECURE = "websecure"
HSTS_SECONDS = 31536000
# Lower-case DNS names, optionally with one leading wildcard label.
_HOST = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?")
# Printable ASCII without braces (Go template delimiters).
_UNSAFE = re.compile(r"[^\x20-\x7e]|[{}]")
# A managed directory YAML writes as it is (a plain scalar) at the start of a path,
# whatever follows: the certificate paths start with it.
_PLAIN_DIRECTORY = re.compile(r"(/[A-Za-z0-9._~!*+,=:@%/-]*)?")
# ipAllowList cannot be empty; the unspecified address is never a client's address,
# so allowing only it allows nobody.
_NOBODY = ["0.0.0.0/32"]


def host_rule(names: tuple[str, ...]) -> str:
    """``Host(`a`) || Host(`b`)``; a wildcard alias becomes a one-label ``HostRegexp``
    (the v3 rule syntax: Go regular expressions).

    :raises ValueError: for anything but a lower-case host name, so no backtick,
        quote, parenthesis or operator can reach the rule.
    """
    matchers = []
    for name in names:
        if not _HOST.fullmatch(name) or ".." in name:
            raise ValueError(f"refusing to write {name!r} into a Traefik rule")
        if name.startswith("*."):
            pattern = "^[a-z0-9-]+\\." + name[2:].replace(".", "\\.") + "$"
            matchers.append(f"HostRegexp(`{pattern}`)")
        else:
            matchers.append(f"Host(`{name}`)")
    return " || ".join(matchers)


def allowed_ranges(allow: tuple[str, ...], deny: tuple[str, ...]) -> list[str]:
    """The ``sourceRange`` of an ipAllowList that honours both lists: the allowed
    networks (everyone when there are none) minus every denied network.

    Traefik only has allow lists; because CIDR blocks either nest or are disjoint,
    subtracting a denied block is exact (``address_exclude``)."""
    allowed = [ipaddress.ip_network(cidr) for cidr in allow]
    denied = [ipaddress.ip_network(cidr) for cidr in deny]
    v4 = _subtract(
        [n for n in allowed if isinstance(n, IPv4Network)] if allow else [IPv4Network("0.0.0.0/0")],
        [n for n in denied if isinstance(n, IPv4Network)],
    )
    v6 = _subtract(
        [n for n in allowed if isinstance(n, IPv6Network)] if allow else [IPv6Network("::/0")],
        [n for n in denied if isinstance(n, IPv6Network)],
    )
    return [str(net) for net in (*v4, *v6)] or list(_NOBODY)


def _subtract(allowed: Sequence[IPv4Network | IPv6Network],
              denied: Sequence[IPv4Network | IPv6Network]) -> list[IPv4Network | IPv6Network]:
    """``allowed`` minus ``denied`` as address intervals in one sorted sweep, then
    back to CIDR blocks: linear in the lists (after sorting), where subtracting block
    by block grows with the square of a long deny list."""
    if not allowed:
        return []
    family = type(allowed[0])
    holes = _merged([(int(n.network_address), int(n.broadcast_address)) for n in denied])
    kept: list[tuple[int, int]] = []
    index = 0
    for start, end in _merged([(int(n.network_address), int(n.broadcast_address))
                               for n in allowed]):
        while index < len(holes) and holes[index][1] < start:
            index += 1
        cursor, hole = start, index
        while hole < len(holes) and holes[hole][0] <= end:
            if holes[hole][0] > cursor:
                kept.append((cursor, holes[hole][0] - 1))
            cursor = max(cursor, holes[hole][1] + 1)
            hole += 1
        if cursor <= end:
            kept.append((cursor, end))
    address = ipaddress.IPv4Address if family is IPv4Network else ipaddress.IPv6Address
    return [net for first, last in kept
            for net in ipaddress.summarize_address_range(address(first), address(last))]


def _merged(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted intervals with the overlapping and touching ones joined."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _check_scalars(data: Any) -> None:
    """:raises ValueError: for a key or string that Go templates could read as
        anything but text, or that is not printable ASCII."""
    if isinstance(data, dict):
        for key, value in data.items():
            _check_scalars(key)
            _check_scalars(value)
    elif isinstance(data, list):
        for item in data:
            _check_scalars(item)
    elif isinstance(data, str) and _UNSAFE.search(data):
        raise ValueError(f"refusing to write {data!r} into Traefik configuration")


def _url(scheme: str, backend: BackendSpec) -> str:
    """:raises ValueError: unless the host is an IP address or a host name, so that
        nothing can add a path, credentials or a port to the URL."""
    try:
        address = ipaddress.ip_address(backend.host)
    except ValueError:
        if not _HOST.fullmatch(backend.host) or backend.host.startswith("*"):
            raise ValueError(f"refusing {backend.host!r} as a Traefik backend") from None
        return f"{scheme}://{backend.host}:{backend.port}"
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"{scheme}://{host}:{backend.port}"


class TraefikEngine(FormEngine):
    """Traefik v3 with the file provider and no plugins."""

    name = "traefik"
    # Left out: the WAF, country rules, caching and the block page (no native
    # middleware answers a fixed status with a text; plugins are not assumed).
    # IP rules are in: deny lists are turned into allow lists (see allowed_ranges).
    capabilities = frozenset({
        Capability.WEIGHTS, Capability.BACKEND_HTTPS, Capability.TLS, Capability.FORCE_HTTPS,
        Capability.HSTS, Capability.HTTP2, Capability.WEBSOCKET, Capability.IP_RULES,
        Capability.BASIC_AUTH, Capability.RATE_LIMIT, Capability.HEADERS,
    })
    # The file provider watches the directory: nothing to reload.
    command_forms = CommandForms(test=("traefik version",), reload=("true",),
                                 offered_test=("traefik version",), offered_reload=("true",))

    defaults = NodeDefaults(config_dir="/etc/traefik/dynamic", test_command="traefik version",
                            reload_command="true", log_dir="/var/log/traefik",
                            binary="traefik", package="traefik", main_config="")
    # What the files take from the node: the managed directory, which the certificate
    # paths start with, and the HTTPS port a redirect names (None: the default, 443).
    value_names = ("base", "https_port")

    def include_line(self, node: NodeSpec) -> str:
        """The static-configuration flag that loads the managed directory."""
        return f"--providers.file.directory={node.config_dir}"

    def node_values(self, node: NodeSpec) -> dict[str, str | None]:
        """:raises ValueError: for a managed directory YAML would have to quote (a
            validated path never is one)."""
        base = node.config_dir.rstrip("/")
        if not _PLAIN_DIRECTORY.fullmatch(base):
            raise ValueError(f"refusing {node.config_dir!r} as a Traefik managed directory")
        return {"base": base,
                "https_port": None if node.https_port == 443 else str(node.https_port)}

    def site_files(self, site: SiteSpec, values: Mapping[str, str | None]) -> dict[str, str]:
        return _site_files(values, site)

    def written(self, name: str, value: str) -> str:
        """The port is a whole string scalar, which YAML quotes (it reads as a number)."""
        if name == "https_port":
            return yaml.safe_dump({"port": value})[len("port: "):-1]
        return value


# Traefik ranks routers by the length of their rule unless told otherwise, so a
# neighbour's long wildcard could outrank an exact name: every router says its rank.
# An exact name always wins over a wildcard covering it, on every engine.
EXACT_PRIORITY = 2_000_000
WILDCARD_PRIORITY = 1_000_000


def _rules(names: tuple[str, ...]) -> list[tuple[str, str, int]]:
    """(router name suffix, rule, priority): the exact names and the wildcards apart."""
    exact = tuple(n for n in names if not n.startswith("*."))
    wildcards = tuple(n for n in names if n.startswith("*."))
    rules = []
    if exact:
        rules.append(("", host_rule(exact), EXACT_PRIORITY))
    if wildcards:
        rules.append(("-wildcard", host_rule(wildcards), WILDCARD_PRIORITY))
    return rules


def _site_files(values: Mapping[str, str | None], site: SiteSpec) -> dict[str, str]:
    # First, because the domain also names the files.
    rules = _rules(site.server_names)
    header = file_header("#", site, str(site.config_version))
    stem = file_stem(site.domain)  # a 253-character domain still names a valid file
    chain_path, key_path = f"tls/{stem}.crt", f"tls/{stem}.key"
    if site.ip_deny:
        header += (f"# ip_deny {' '.join(site.ip_deny)} is written as what it leaves "
                   f"allowed (rpcc-{site.id}-ip)\n")
    config = _site_config(values, site, rules, chain_path, key_path)
    # Comments too: Go templates see the whole file.
    _check_scalars([header.splitlines(), config])
    out = {f"sites/{stem}.yml":
           header + yaml.safe_dump(config, sort_keys=False, width=4096)}
    if site.certificate is not None and site.serves_tls:
        # PEM readers skip text before the first BEGIN line, so the header stays.
        out[chain_path] = header + site.certificate.chain_pem
        out[key_path] = header + site.certificate.key_pem
    return out


def _site_config(values: Mapping[str, str | None], site: SiteSpec,
                 rules: list[tuple[str, str, int]],
                 chain_path: str, key_path: str) -> dict[str, Any]:
    prefix = f"rpcc-{site.id}"
    http: dict[str, Any] = {"routers": {}, "services": _services(site, prefix)}
    if site.backend_protocol == "https":
        # SNI is the public name the client asked for; backends are reached by
        # address inside the operator's network and often carry self-signed
        # certificates, so they are not verified (as nginx's default).
        http["serversTransports"] = {prefix: {"serverName": site.domain,
                                              "insecureSkipVerify": True}}
    middlewares = _middlewares(values, site, prefix)
    # Headers first, so that they are on every answer, including refusals.
    chain = [name for name in (f"{prefix}-headers", f"{prefix}-ip", f"{prefix}-ratelimit",
                               f"{prefix}-auth") if name in middlewares]
    redirect = f"{prefix}-redirect"
    for suffix, rule, priority in rules:
        http["routers"][f"{prefix}-web{suffix}"] = _router(
            WEB, rule, priority, prefix, [redirect] if redirect in middlewares else chain)
    config: dict[str, Any] = {"http": http}
    if site.serves_tls:
        secure_chain = [f"{prefix}-hsts", *chain] if site.hsts else chain
        for suffix, rule, priority in rules:
            http["routers"][f"{prefix}-websecure{suffix}"] = {
                **_router(WEBSECURE, rule, priority, prefix, secure_chain), "tls": {},
            }
        base = values["base"]
        config["tls"] = {"certificates": [{"certFile": f"{base}/{chain_path}",
                                           "keyFile": f"{base}/{key_path}"}]}
    if middlewares:
        http["middlewares"] = middlewares
    return config


def _router(entry_point: str, rule: str, priority: int, service: str,
            middlewares: list[str]) -> dict[str, Any]:
    router: dict[str, Any] = {"entryPoints": [entry_point], "rule": rule,
                              "priority": priority, "service": service}
    if middlewares:
        router["middlewares"] = middlewares
    return router


def _services(site: SiteSpec, prefix: str) -> dict[str, Any]:
    """One round-robin load balancer, or, when weights differ, a weighted service
    over one load balancer per backend."""
    scheme = site.backend_protocol

    def balancer(backends: tuple[BackendSpec, ...]) -> dict[str, Any]:
        spec: dict[str, Any] = {"servers": [{"url": _url(scheme, b)} for b in backends]}
        if scheme == "https":
            spec["serversTransport"] = prefix
        return {"loadBalancer": spec}

    if len({b.weight for b in site.backends}) <= 1:
        return {prefix: balancer(site.backends)}
    services: dict[str, Any] = {prefix: {"weighted": {"services": [
        {"name": f"{prefix}-backend-{i}", "weight": b.weight}
        for i, b in enumerate(site.backends, 1)
    ]}}}
    for i, backend in enumerate(site.backends, 1):
        services[f"{prefix}-backend-{i}"] = balancer((backend,))
    return services


def _middlewares(values: Mapping[str, str | None], site: SiteSpec,
                 prefix: str) -> dict[str, Any]:
    middlewares: dict[str, Any] = {}
    if site.force_https and site.serves_tls:
        redirect: dict[str, Any] = {"scheme": "https", "permanent": True}
        if values["https_port"] is not None:
            redirect["port"] = values["https_port"]
        middlewares[f"{prefix}-redirect"] = {"redirectScheme": redirect}
    if site.headers:
        middlewares[f"{prefix}-headers"] = {"headers": {
            "customResponseHeaders": dict(site.headers)}}
    if site.hsts and site.serves_tls:
        middlewares[f"{prefix}-hsts"] = {"headers": {"stsSeconds": HSTS_SECONDS}}
    if site.ip_allow or site.ip_deny:
        middlewares[f"{prefix}-ip"] = {"ipAllowList": {
            "sourceRange": allowed_ranges(site.ip_allow, site.ip_deny)}}
    if site.rate_limit_rps is not None:
        # Traefik treats a burst below 1 as 1; write what it will do.
        middlewares[f"{prefix}-ratelimit"] = {"rateLimit": {
            "average": site.rate_limit_rps, "burst": max(site.rate_limit_burst, 1)}}
    if site.basic_auth:
        middlewares[f"{prefix}-auth"] = {"basicAuth": {
            "users": [f"{user}:{hashed}" for user, hashed in site.basic_auth]}}
    return middlewares


ENGINE = TraefikEngine()
