"""Where backends may point: the address policy that keeps a client's site from
reaching the nodes themselves, cloud metadata services or networks an
administrator closed (in Settings, else BACKEND_DENIED_NETWORKS and
BACKEND_ALLOWED_NETWORKS)."""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from dataclasses import dataclass

import dns.exception
import dns.resolver
from flask import current_app
from sqlalchemy import select

from app.extensions import db
from app.models import Node, Setting
from app.security import (
    DEFAULT_DENIED_NETWORKS,
    Address,
    Network,
    backend_refusal,
    numeric_address,
    parse_networks,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendPolicy:
    denied: tuple[Network, ...]
    allowed: tuple[Network, ...]
    resolver: dns.resolver.Resolver | None
    # Monotonic time by which one request's lookups must be done: a site with many
    # backends on a slow or silent DNS server must not hold a worker thread for minutes.
    deadline: float = float("inf")

    def refusal(self, host: str) -> str | None:
        """Why ``host`` may not be a backend, or None. A name is refused when any
        address it resolves to is refused; one that does not resolve is left to the
        node (it is that site's problem, never its neighbours')."""
        address = numeric_address(host)
        if address is not None:
            return backend_refusal(address, self.denied, self.allowed)
        if self.resolver is not None and time.monotonic() >= self.deadline:
            return f"the address of {host} could not be checked in time: try again"
        for resolved in self._resolve(host):
            reason = backend_refusal(resolved, self.denied, self.allowed)
            if reason is not None:
                return f"{host} resolves to {reason}"
        return None

    def connectable(self, host: str) -> Address:
        """The address the control plane itself may connect to for ``host`` (a
        webhook, say): every address the name has must pass the policy, and the
        caller connects to the one returned, so a name answering differently to a
        second lookup (DNS rebinding) never gets one.  Names are resolved with the
        configured servers, or the system's when resolving is off for backends.

        :raises ValueError: with the reason the host is refused.
        :raises LookupError: when the name has no address (now).
        """
        address = numeric_address(host)
        if address is not None:
            found = [address]
        elif self.resolver is not None:
            found = self._resolve(host)
        else:
            found = _system_addresses(host)
        if not found:
            raise LookupError(f"{host} does not resolve")
        for candidate in found:
            reason = backend_refusal(candidate, self.denied, self.allowed)
            if reason is not None:
                raise ValueError(reason if candidate is address
                                 else f"{host} resolves to {reason}")
        return found[0]

    def _resolve(self, name: str) -> list[Address]:
        if self.resolver is None:
            return []
        found: list[Address] = []
        for kind in ("A", "AAAA"):
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                answer = self.resolver.resolve(name, kind, search=False,
                                               lifetime=min(remaining, self.resolver.lifetime))
            except (dns.exception.DNSException, OSError) as exc:
                logger.debug("backend %s: no %s record (%s)", name, kind, type(exc).__name__)
                continue
            found += [ipaddress.ip_address(record.to_text()) for record in answer]
        return found


def _system_addresses(name: str) -> list[Address]:
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0])
                              for info in infos))


# Where an administrator's networks are stored (``Setting`` rows, comma-separated
# CIDRs; an empty value is an empty list, no row is the environment's value).
DENIED_SETTING = "backend_denied_networks"
ALLOWED_SETTING = "backend_allowed_networks"


def configured_networks() -> tuple[str, str]:
    """The denied and allowed networks in force (comma-separated): an
    administrator's from Settings, else the environment's."""
    cfg = current_app.config
    stored = {row.key: row.value for row in db.session.scalars(
        select(Setting).where(Setting.key.in_((DENIED_SETTING, ALLOWED_SETTING))))}
    return (stored.get(DENIED_SETTING, cfg.get("BACKEND_DENIED_NETWORKS") or ""),
            stored.get(ALLOWED_SETTING, cfg.get("BACKEND_ALLOWED_NETWORKS") or ""))


def node_networks() -> tuple[Network, ...]:
    """The nodes' own numeric addresses (SSH host and listen address)."""
    nodes = set()
    for host, listen in db.session.execute(select(Node.host, Node.listen_address)):
        for value in (host, listen):
            address = numeric_address(value) if value else None
            if address is not None:
                nodes.add(ipaddress.ip_network(address))
    return tuple(sorted(nodes, key=str))


def policy() -> BackendPolicy:
    """The policy now: the networks always denied, the configured ones, and the
    nodes' own addresses; the configured allowed networks are the exceptions."""
    cfg = current_app.config
    denied, allowed = configured_networks()
    return BackendPolicy(parse_networks(",".join(DEFAULT_DENIED_NETWORKS))
                         + parse_networks(denied) + node_networks(),
                         parse_networks(allowed),
                         _resolver(cfg.get("BACKEND_RESOLVERS") or ""),
                         time.monotonic() + float(cfg.get("BACKEND_RESOLVE_SECONDS", 5.0)))


def _resolver(servers: str) -> dns.resolver.Resolver | None:
    """Names are resolved with the configured servers (``host`` or ``host:port``),
    with the system's when none is configured, or not at all when set to ``off``."""
    if servers.strip().lower() == "off":
        return None
    entries = [s for s in servers.replace(",", " ").split() if s]
    if not entries:
        system = dns.resolver.Resolver()
        system.lifetime = 3.0
        return system
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = []
    for entry in entries:
        host, _, port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        resolver.nameservers.append(host or entry)
        if port:
            resolver.port = int(port)
    resolver.lifetime = 3.0
    return resolver
