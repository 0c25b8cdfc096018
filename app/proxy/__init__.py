"""Proxy engines: one interface (``base.Engine``), one module per server type.

Each engine module exposes ``ENGINE``; the registry imports them by name so that the
interface module stays free of engine specifics.
"""

from __future__ import annotations

import importlib

from app.proxy.base import Engine

ENGINE_MODULES = {
    "nginx": "app.proxy.nginx",
    "caddy": "app.proxy.caddy",
    "traefik": "app.proxy.traefik",
}


def get_engine(name: str) -> Engine:
    """:raises KeyError: for an unknown engine name."""
    module = importlib.import_module(ENGINE_MODULES[name])
    engine: Engine = module.ENGINE
    return engine


def all_engines() -> dict[str, Engine]:
    return {name: get_engine(name) for name in ENGINE_MODULES}
