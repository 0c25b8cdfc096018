"""A fleet on loopback for deployment tests: one real sshd, nginx nodes on
127.0.0.2, 127.0.0.3, ... (each its own prefix, reached over SSH through the node's
config directory, test and reload commands) and local backends.

Each node starts on the operator's layout: a plain managed directory holding an
empty rendered configuration, which the first deployment adopts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from app.engines.nginx import ENGINE as NGINX
from app.services import nodes
from tests.caddy_node import CaddyNode
from tests.nginx_node import Backend, NginxNode, Response, fetch


class FleetNode:
    """One nginx node and its row."""

    def __init__(self, nginx: NginxNode, node_id: int, name: str) -> None:
        self.nginx = nginx
        self.id = node_id
        self.name = name

    def get(self, host: str, path: str = "/") -> Response:
        return fetch(self.nginx, host, path)

    def snapshot(self) -> dict[str, str]:
        """Digest of every file the node's nginx loads from the managed directory
        (following the link), to prove byte-for-byte restores."""
        root = self.nginx.config_dir
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}


def start_nginx(address: str) -> NginxNode:
    node = NginxNode(address=address)
    empty = NGINX.render(node.spec, [])
    node.write(empty)
    node.start()
    return node


def start_fleet(teardown: ExitStack, addresses: Iterable[str]) -> list[NginxNode]:
    """An nginx node on each address, each stopped and removed by ``teardown`` even
    if stopping another one fails."""
    started = []
    for address in addresses:
        nginx = start_nginx(address)
        teardown.callback(nginx.remove)
        teardown.callback(nginx.stop)
        started.append(nginx)
    return started


def register(admin: Any, nginx: NginxNode, name: str, ssh_port: int, key: str,
             pool: str = "default", **extra: Any) -> FleetNode:
    spec = nginx.spec
    row = nodes.create_node(admin, {
        "name": name, "host": "127.0.0.1", "ssh_port": ssh_port, "ssh_user": "root",
        "ssh_private_key": key, "proxy_type": "nginx", "pool": pool,
        "config_dir": spec.config_dir, "test_command": spec.test_command,
        "reload_command": spec.reload_command, "listen_address": spec.listen_address,
        "http_port": spec.http_port, "https_port": spec.https_port,
        "log_dir": spec.log_dir, "cache_dir": spec.cache_dir,
        "geoip_db_path": spec.geoip_db_path, "status_port": spec.status_port, **extra,
    })
    return FleetNode(nginx, row.id, name)


class Backends:
    """Named local backends, stopped together."""

    def __init__(self) -> None:
        self.running: list[Backend] = []

    def start(self, name: str) -> Backend:
        backend = Backend(name)
        self.running.append(backend)
        return backend

    def stop(self) -> None:
        """Stop every one, even if stopping another fails."""
        with ExitStack() as teardown:
            for backend in self.running:
                teardown.callback(backend.stop)


def release_dirs(node: FleetNode) -> list[Path]:
    releases = Path(str(node.nginx.config_dir) + ".releases")
    return sorted(releases.iterdir()) if releases.exists() else []


def register_caddy(admin: Any, caddy: CaddyNode, name: str, ssh_port: int, key: str,
                   pool: str = "default") -> int:
    """Register a running Caddy node (reached over SSH like the nginx ones); its id."""
    spec = caddy.spec
    row = nodes.create_node(admin, {
        "name": name, "host": "127.0.0.1", "ssh_port": ssh_port, "ssh_user": "root",
        "ssh_private_key": key, "proxy_type": "caddy", "pool": pool,
        "config_dir": spec.config_dir, "test_command": spec.test_command,
        "reload_command": spec.reload_command, "listen_address": spec.listen_address,
        "http_port": spec.http_port, "https_port": spec.https_port, "log_dir": spec.log_dir,
    })
    return row.id
