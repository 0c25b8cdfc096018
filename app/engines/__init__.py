"""Proxy engines: one interface (``base.Engine``), one module per server type, and
this registry, which every list of engines in the control plane reads."""

from __future__ import annotations

from app.engines.base import Engine
from app.engines.caddy import ENGINE as CADDY
from app.engines.nginx import ENGINE as NGINX
from app.engines.traefik import ENGINE as TRAEFIK

ENGINES: dict[str, Engine] = {engine.name: engine for engine in (NGINX, CADDY, TRAEFIK)}


def get_engine(name: str) -> Engine:
    """:raises KeyError: for an unknown engine name."""
    return ENGINES[name]


def all_engines() -> dict[str, Engine]:
    return dict(ENGINES)


def engine_names() -> list[str]:
    return list(ENGINES)
