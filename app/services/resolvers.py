"""The DNS servers the control plane asks about names: the nameserver checks and the
ACME pre-check both read them from here.

A list is ``addr[:port]`` entries (``127.0.0.1:5300, [2001:db8::53]:53, 192.0.2.53``)
separated by commas, spaces or lines.  There is one parser for every such list, so
that a list valid in ``DNS_RESOLVERS`` is valid in ``ACME_PRECHECK_RESOLVERS`` and in
Settings.  Entries are IP addresses only: a resolver named by a host name would need
another resolver to be found.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

import dns.nameserver
import dns.resolver
from flask import current_app

from app.extensions import db
from app.models import Setting

#: The Settings row that replaces ``DNS_RESOLVERS`` (an administrator's list).
SETTING = "dns_resolvers"
DEFAULT_PORT = 53
MAX_RESOLVERS = 16
_SEPARATORS = re.compile(r"[,\s]+")


@dataclass(frozen=True)
class ResolverAddress:
    host: str
    port: int = DEFAULT_PORT

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORT else f"{host}:{self.port}"


def _entry(item: str) -> ResolverAddress:
    host, port_text = item, ""
    if item.startswith("["):
        host, closed, rest = item[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise ValueError(f"'{item[:60]}' is not an address such as [2001:db8::53]:53")
        port_text = rest[1:]
    elif item.count(":") == 1:
        host, port_text = item.split(":")
    if "%" in host:
        raise ValueError(f"'{item[:60]}' names an IPv6 zone; use a plain address")
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"'{item[:60]}' is not an IP address with an optional port, such "
                         "as 192.0.2.53 or 127.0.0.1:5300") from None
    port = DEFAULT_PORT
    if port_text or item.endswith(":"):
        if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"'{item[:60]}' has a port that is not a number between 1 "
                             "and 65535")
        port = int(port_text)
    return ResolverAddress(address, port)


def parse_resolvers(value: str | Sequence[str]) -> tuple[ResolverAddress, ...]:
    """Every entry of a list (text, or one entry per item), duplicates dropped.

    :raises ValueError: naming the first entry that is not an address.
    """
    items = _SEPARATORS.split(value) if isinstance(value, str) else list(value)
    found: list[ResolverAddress] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError("each resolver must be text such as 192.0.2.53")
        item = item.strip()
        if not item:
            continue
        address = _entry(item)
        if address not in found:
            found.append(address)
    if len(found) > MAX_RESOLVERS:
        raise ValueError(f"at most {MAX_RESOLVERS} resolvers")
    return tuple(found)


def make_resolver(servers: Sequence[ResolverAddress], timeout: float) -> dns.resolver.Resolver:
    """A resolver that asks exactly ``servers`` (never the system's configuration) and
    gives up on a name after ``timeout`` seconds."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(server.host, server.port)
                            for server in servers]
    resolver.lifetime = timeout
    resolver.timeout = timeout
    return resolver


def stored() -> str | None:
    """An administrator's list, or None when the environment's is in force."""
    row = db.session.get(Setting, SETTING)
    return row.value if row is not None else None


def configured() -> tuple[ResolverAddress, ...]:
    """The resolvers in force: an administrator's list, else ``DNS_RESOLVERS``.

    :raises ValueError: ``DNS_RESOLVERS`` is not a list of addresses.
    """
    value = stored()
    if value is None:
        value = current_app.config["DNS_RESOLVERS"] or ""
    return parse_resolvers(value)
