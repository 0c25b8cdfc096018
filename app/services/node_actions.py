"""Admin actions on one node over SSH: "check" (is it reachable and serving?) and
"prepare" (install the proxy if missing, create the managed directories, make the
main configuration load them), both safe to repeat."""

from __future__ import annotations

import http.client
import shlex
import time
from typing import Any

from app.connector import ConnectorError, HostKeyChanged, SSHConnectionPool, SSHTarget
from app.connector.hostkeys import fingerprint
from app.engines import get_engine
from app.engines.base import PROBE_HOST, NodeDefaults, acme_webroot
from app.errors import ValidationError
from app.extensions import db, ssh
from app.models import Node, NodeStatus, User
from app.models.base import utcnow
from app.services import audit, rendering
from app.services.common import get_or_404, require_admin
from app.services.deployments import probe_token, ssh_target

# Install commands per distribution family (os-release ID or ID_LIKE).
PACKAGE_MANAGERS: dict[str, list[list[str]]] = {
    "debian": [["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "update", "-q"],
               ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q"]],
    "fedora": [["dnf", "install", "-y"]],
    "rhel": [["dnf", "install", "-y"]],
    "alpine": [["apk", "add", "--no-cache"]],
    "arch": [["pacman", "-S", "--noconfirm", "--needed"]],
    "suse": [["zypper", "--non-interactive", "install"]],
}


def parse_os_release(text: str) -> dict[str, str]:
    """``KEY=value`` lines, quotes removed (the file is shell-like, never executed)."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip().isidentifier():
            try:
                parts = shlex.split(value)
            except ValueError:
                continue
            values[key.strip()] = parts[0] if parts else ""
    return values


def package_manager(os_release: dict[str, str]) -> tuple[str, list[list[str]]] | None:
    """The distribution family we know how to install on, and its commands."""
    candidates = [os_release.get("ID", "")] + os_release.get("ID_LIKE", "").split()
    for name in candidates:
        for family in ("debian", "ubuntu", "fedora", "rhel", "centos", "alpine", "arch",
                       "suse", "opensuse"):
            if name == family or name.startswith(family):
                key = {"ubuntu": "debian", "centos": "rhel", "opensuse": "suse"}.get(family,
                                                                                     family)
                return key, PACKAGE_MANAGERS[key]
    return None


def _http_probe(address: str, port: int, timeout: float = 5.0,
                attempts: int = 3) -> dict[str, Any]:
    """Any HTTP answer proves the proxy serves; a few attempts ride out a reload."""
    problem = ""
    for attempt in range(attempts):
        started = time.monotonic()
        conn = http.client.HTTPConnection(address, port, timeout=timeout)
        try:
            conn.request("GET", "/", headers={"Host": PROBE_HOST,
                                              "User-Agent": "rpcc-check/1"})
            status = conn.getresponse().status
            return {"ok": True, "detail": f"HTTP {status}",
                    "seconds": round(time.monotonic() - started, 3)}
        except (OSError, http.client.HTTPException) as exc:
            problem = f"no HTTP answer on {address}:{port}: {exc}"
        finally:
            conn.close()
        if attempt + 1 < attempts:
            time.sleep(0.3)
    return {"ok": False, "detail": problem}


def check_node(actor: User, node_id: int) -> Node:
    """SSH reachable, proxy process running, HTTP answering: recorded on the node."""
    require_admin(actor)
    node = get_or_404(Node, node_id, "node")
    pool, target = ssh.pool(), ssh_target(node)
    binary = get_engine(node.proxy_type.value).defaults.binary
    result: dict[str, Any] = {}
    started = time.monotonic()
    try:
        pool.run(target, ["true"])
        result["ssh"] = {"ok": True, "detail": "reachable",
                         "seconds": round(time.monotonic() - started, 3)}
        running = pool.run(target, ["pgrep", "-x", binary])
        result["service"] = {"ok": running.ok, "detail": (f"{binary} is running" if running.ok
                                                          else f"no {binary} process")}
    except ConnectorError as exc:
        result["ssh"] = {"ok": False, "detail": _connector_message(node, exc)}
        result["service"] = {"ok": False, "detail": "not checked: SSH failed"}
    result["http"] = _http_probe(node.listen_address or node.host, node.http_port)
    healthy = all(part["ok"] for part in result.values())
    node.last_check, node.last_check_at = result, utcnow()
    if node.status != NodeStatus.DRAINING:
        node.status = NodeStatus.ONLINE if healthy else NodeStatus.OFFLINE
    if result["ssh"]["ok"]:
        node.last_seen = utcnow()
    audit.record(actor, "node.check", "node", node.id, {"healthy": healthy})
    db.session.commit()
    return node


def _connector_message(node: Node, exc: ConnectorError) -> str:
    if isinstance(exc, HostKeyChanged):
        with db.session.no_autoflush:
            node.pending_host_key = exc.presented_key
        return f"{exc}; accept the new key if the change is expected"
    return f"{type(exc).__name__}: {exc}"


def prepare_node(actor: User, node_id: int) -> list[str]:
    """Make the node ready for deployments; returns what was done, step by step.

    :raises ValidationError: with the reason when a step fails (nothing half-done is
        left: every step is idempotent and a rerun picks up where this one stopped).
    """
    require_admin(actor)
    node = get_or_404(Node, node_id, "node")
    pool, target = ssh.pool(), ssh_target(node)
    defaults = get_engine(node.proxy_type.value).defaults
    log: list[str] = []
    try:
        os_release = parse_os_release(pool.read_file(target, "/etc/os-release").decode())
        log.append(f"distribution: {os_release.get('PRETTY_NAME') or os_release.get('ID')}")
        _ensure_installed(pool, target, defaults, os_release, log)
        _ensure_directories(pool, target, node, log)
        _ensure_include(pool, target, node, log)
        check = pool.run(target, shlex.split(node.test_command))
        if not check.ok:
            raise ValidationError("the node's test command fails after prepare", {
                "test_command": (check.stderr or check.stdout).strip()[-1000:]})
        log.append("test command passes")
        reload = pool.run(target, shlex.split(node.reload_command))
        log.append("reloaded" if reload.ok else
                   f"reload failed (is the proxy service running?): "
                   f"{(reload.stderr or reload.stdout).strip()[-300:]}")
    except ConnectorError as exc:
        db.session.rollback()
        raise ValidationError("could not prepare the node",
                              {"node": _connector_message(node, exc)}) from exc
    audit.record(actor, "node.prepare", "node", node.id, {"steps": log})
    db.session.commit()
    return log


def _ensure_installed(pool: SSHConnectionPool, target: SSHTarget, defaults: NodeDefaults,
                      os_release: dict[str, str], log: list[str]) -> None:
    binary = defaults.binary
    # A fixed command line: nothing in it comes from a user.
    found = pool.run(target, ["sh", "-c", f"command -v {binary}"])
    if found.ok:
        log.append(f"{binary} already installed at {found.stdout.strip()}")
        return
    manager = package_manager(os_release)
    if manager is None:
        raise ValidationError("unknown distribution", {
            "node": f"cannot install {binary} on {os_release.get('ID', 'this system')}: "
                    f"install it by hand"})
    family, commands = manager
    for command in commands[:-1]:
        pool.run(target, command, timeout=600)
    install = pool.run(target, [*commands[-1], defaults.package], timeout=900)
    if not install.ok:
        raise ValidationError("installation failed", {
            "node": f"installing {defaults.package} failed: "
                    f"{(install.stderr or install.stdout).strip()[-1000:]}"})
    log.append(f"installed {defaults.package} with the {family} package manager")


def _ensure_directories(pool: SSHConnectionPool, target: SSHTarget, node: Node,
                        log: list[str]) -> None:
    spec = rendering.node_spec(node)
    for path in (node.log_dir, node.cache_dir, acme_webroot(spec)):
        pool.mkdir_p(target, path)
    if pool.kind(target, node.config_dir) is None:
        # An empty managed directory that the include line can already load, with the
        # probe, so that the node answers HTTP (and "check" passes) before any site.
        engine = get_engine(node.proxy_type.value)
        files = engine.render(spec, []).files
        files.update(engine.probe(spec, probe_token(files)))
        pool.upload_tree(target, node.config_dir,
                         {path: text.encode() for path, text in files.items()})
        log.append(f"created {node.config_dir}")
    else:
        log.append(f"{node.config_dir} exists")


def _ensure_include(pool: SSHConnectionPool, target: SSHTarget, node: Node, log: list[str]) -> None:
    main = node.main_config or get_engine(node.proxy_type.value).defaults.main_config
    include = get_engine(node.proxy_type.value).include_line(rendering.node_spec(node))
    if not main:
        log.append(f"add this to the proxy's static configuration by hand: {include}")
        return
    try:
        current = pool.read_file(target, main).decode()
    except ConnectorError:
        current = ""
    if include in current:
        log.append(f"{main} already loads {node.config_dir}")
        return
    # First in the file: Caddy's global options block must open the Caddyfile.
    pool.write_file(target, main, (include + "\n" + current).encode())
    log.append(f"added the include line to {main}")


def accept_host_key(actor: User, node_id: int) -> Node:
    """Pin the key the node now presents (after the admin checked why it changed)."""
    require_admin(actor)
    node = get_or_404(Node, node_id, "node")
    if not node.pending_host_key:
        raise ValidationError("nothing to accept", {"host_key": "the node presented no new key"})
    old = node.host_key
    node.host_key, node.pending_host_key = node.pending_host_key, None
    ssh.pool().evict(node.id)
    audit.record(actor, "node.host_key_accept", "node", node.id,
                 {"old": fingerprint_or_none(old),
                  "new": fingerprint_or_none(node.host_key)})
    db.session.commit()
    return node


def fingerprint_or_none(line: str | None) -> str | None:
    """SHA256 fingerprint as ``ssh-keygen -l`` shows it, for pages and audit entries."""
    return fingerprint(line) if line else None
