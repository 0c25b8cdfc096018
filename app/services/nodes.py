"""Proxy nodes and pools: the admin's inventory of the fleet."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_ssh_private_key,
)
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import selectinload

from app.engines import get_engine
from app.errors import Conflict, NotFound, ValidationError
from app.extensions import db
from app.models import Node, NodeStatus, Pool, ProxyType, Site, User
from app.security import validate_host, validate_object_name, validate_path, validate_port
from app.services import audit, node_commands
from app.services.common import Page, get_or_404, paginate, require_admin

NODE_FIELDS = (
    "name",
    "host",
    "ssh_port",
    "ssh_user",
    "ssh_private_key",
    "ssh_password",
    "proxy_type",
    "pool",
    "config_dir",
    "test_command",
    "reload_command",
    "listen_address",
    "http_port",
    "https_port",
    "glances_url",
    "enabled",
    "log_dir",
    "cache_dir",
    "geoip_db_path",
    "main_config",
    "status_port",
)
SECRET_FIELDS = ("ssh_private_key", "ssh_password")

# Paths and commands for a stock Debian install of each engine; admins override per node.
_SSH_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
COMMAND_FIELDS = ("test_command", "reload_command")


def validate_private_key(value: Any) -> str:
    if not isinstance(value, str) or "PRIVATE KEY-----" not in value:
        raise ValueError("must be a PEM or OpenSSH private key")
    data = value.strip().encode() + b"\n"
    for loader in (load_ssh_private_key, load_pem_private_key):
        try:
            loader(data, password=None)
            return value.strip() + "\n"
        except (ValueError, TypeError):
            continue
    raise ValueError("cannot be read (it must be an unencrypted private key)")


GLANCES_URL_FORMS = ("http(s)://HOST[:PORT][/PATH] to read Glances directly, or "
                     "ssh://127.0.0.1:PORT to reach it through the node's SSH connection")


def validate_glances_url(value: Any) -> str | None:
    """Where the metrics poll finds the node's Glances: empty (through SSH, to
    ``GLANCES_PORT`` on the node's loopback), ``ssh://LOOPBACK[:PORT]`` (through SSH,
    elsewhere on the node's loopback) or an ``http(s)`` URL read directly."""
    if value in (None, ""):
        return None
    if not isinstance(value, str) or len(value) > 512 or not value.isprintable():
        raise ValueError(f"must be {GLANCES_URL_FORMS}")
    parts = urlsplit(value)
    if parts.scheme == "ssh":
        return _glances_tunnel_url(parts)
    if parts.scheme not in {"http", "https"} or not parts.hostname or parts.username \
            or parts.password:
        raise ValueError(f"must be {GLANCES_URL_FORMS}, without credentials")
    validate_host(parts.hostname)
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    if parts.path not in ("", "/"):
        validate_path(parts.path)
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError("has an invalid port") from None
    return value.rstrip("/")


def _glances_tunnel_url(parts: SplitResult) -> str:
    """``ssh://ADDRESS[:PORT]``, normalised.  The address must be loopback: a channel
    reaches what the node itself listens on there, and Glances on another address is
    read over HTTP instead."""
    if parts.username or parts.password or parts.query or parts.fragment \
            or parts.path not in ("", "/"):
        raise ValueError("ssh:// takes a loopback address and a port only, e.g. "
                         "ssh://127.0.0.1:61208")
    try:
        address = ipaddress.ip_address(parts.hostname or "")
    except ValueError:
        raise ValueError("ssh:// needs a loopback IP address and an optional port, e.g. "
                         "ssh://127.0.0.1:61208") from None
    if not address.is_loopback:
        raise ValueError("ssh:// reaches Glances on the node's own loopback: the address "
                         "must be in 127.0.0.0/8 or ::1")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError("has an invalid port")
    shown = f"[{address}]" if address.version == 6 else str(address)
    return f"ssh://{shown}:{port}" if port else f"ssh://{shown}"


def _pool_by_name(name: Any) -> Pool | None:
    if not isinstance(name, str):
        return None
    return db.session.scalar(select(Pool).where(Pool.name == name))


def _clean_node(data: dict[str, Any], *, partial: bool, node: Node | None) -> dict[str, Any]:
    errors: dict[str, str] = {}
    out: dict[str, Any] = {}
    for name in sorted(set(data) - set(NODE_FIELDS)):
        errors[name] = "unknown field"

    def field(name: str, check: Any) -> None:
        """Required fields reject None; optional ones map None to their default."""
        if name not in data and partial:
            return
        try:
            out[name] = check(data.get(name))
        except ValueError as exc:
            errors[name] = str(exc)

    def proxy_check(v: Any) -> ProxyType:
        try:
            return ProxyType(v if v is not None else "nginx")
        except ValueError:
            raise ValueError("must be nginx, caddy or traefik") from None

    def user_check(v: Any) -> str:
        v = "root" if v is None else v
        if not isinstance(v, str) or not _SSH_USER.fullmatch(v):
            raise ValueError("must be a valid Unix user name")
        return v

    def pool_check(v: Any) -> Pool:
        pool = _pool_by_name(v if v is not None else "default")
        if pool is None:
            raise ValueError(f"no pool named '{str(v)[:64]}'")
        return pool

    def optional_ip(v: Any) -> str | None:
        if v in (None, ""):
            return None
        import ipaddress

        try:
            return str(ipaddress.ip_address(v))
        except ValueError:
            raise ValueError("must be an IP address") from None

    def bool_check(v: Any) -> bool:
        if v is None:
            return True
        if not isinstance(v, bool):
            raise ValueError("must be true or false")
        return v

    def default_port(default: int) -> Any:
        return lambda v: validate_port(default if v is None else v)

    field("name", validate_object_name)
    field("host", validate_host)
    field("ssh_port", default_port(22))
    field("ssh_user", user_check)
    field("proxy_type", proxy_check)
    field("pool", pool_check)
    field("listen_address", optional_ip)
    field("http_port", default_port(80))
    field("https_port", default_port(443))
    field("glances_url", validate_glances_url)
    field("enabled", bool_check)
    field("status_port", lambda v: None if v in (None, "") else validate_port(v))
    ports = {name: out.get(name, getattr(node, name, None))
             for name in ("status_port", "ssh_port", "http_port", "https_port")}
    taken = {ports["ssh_port"]: "SSH", ports["http_port"]: "HTTP", ports["https_port"]: "HTTPS"}
    if ports["status_port"] is not None and ports["status_port"] in taken:
        errors["status_port"] = (f"is the node's {taken[ports['status_port']]} port: it must "
                                 "differ from the SSH, HTTP and HTTPS ports")
    for name in ("config_dir", "log_dir", "cache_dir", "geoip_db_path", "main_config"):
        if data.get(name) in (None, ""):
            continue
        try:
            out[name] = validate_path(data[name])
        except ValueError as exc:
            errors[name] = str(exc)
    if "proxy_type" not in errors:
        errors.update(_clean_commands(data, out, node))
    if data.get("ssh_private_key"):
        try:
            out["ssh_private_key"] = validate_private_key(data["ssh_private_key"])
        except ValueError as exc:
            errors["ssh_private_key"] = str(exc)
    if data.get("ssh_password"):
        value = data["ssh_password"]
        if not isinstance(value, str) or len(value) > 256 or any(ord(c) < 32 for c in value):
            errors["ssh_password"] = "must be at most 256 printable characters"
        else:
            out["ssh_password"] = value
    if not partial and not out.get("ssh_private_key") and not out.get("ssh_password"):
        errors.setdefault("ssh_private_key", "a private key or a password is required")
    if errors:
        raise ValidationError("invalid node", errors)
    proxy_type = out.get("proxy_type") or (node.proxy_type if node else ProxyType.NGINX)
    if not partial:
        for key, default in get_engine(proxy_type.value).defaults.node_fields().items():
            out.setdefault(key, default)
    return out


def _clean_commands(data: dict[str, Any], out: dict[str, Any],
                    node: Node | None) -> dict[str, str]:
    """Put the submitted commands in ``out``; returns the errors.

    A command must be a known form of the node's engine (see ``node_commands``).
    One left as it is keeps working whatever it is, so nodes from before the forms
    existed go on deploying; a new engine needs commands of its own.
    """
    errors: dict[str, str] = {}
    engine = out.get("proxy_type") or (node.proxy_type if node else ProxyType.NGINX)
    user = out.get("ssh_user") or (node.ssh_user if node else "root")
    engine_changed = node is not None and engine != node.proxy_type
    for name in COMMAND_FIELDS:
        purpose = name.removesuffix("_command")
        value = data.get(name)
        if value in (None, ""):
            if not engine_changed:
                continue
            value = getattr(node, name)
        elif node is not None and value == getattr(node, name) and not engine_changed:
            continue
        try:
            out[name] = node_commands.clean_command(engine.value, purpose, value, user)
        except ValueError as exc:
            errors[name] = str(exc)
    return errors


def _check_name_free(name: str | None, exclude_id: int | None) -> None:
    if not name:
        return
    stmt = select(Node.id).where(Node.name == name)
    if exclude_id:
        stmt = stmt.where(Node.id != exclude_id)
    if db.session.scalar(stmt):
        raise ValidationError("invalid node", {"name": "is already used by another node"})


def create_node(actor: User | None, data: dict[str, Any], *, discovered: bool = False) -> Node:
    if actor is not None:
        require_admin(actor)
    clean = _clean_node(data, partial=False, node=None)
    _check_name_free(clean["name"], None)
    node = Node(is_discovered=discovered, **clean)
    db.session.add(node)
    db.session.flush()
    audit.record(actor, "node.create", "node", node.id,
                 {"name": node.name, "test_command": node.test_command,
                  "reload_command": node.reload_command})
    db.session.commit()
    return node


def update_node(actor: User | None, node_id: int, data: dict[str, Any]) -> Node:
    if actor is not None:
        require_admin(actor)
    node = get_or_404(Node, node_id, "node")
    clean = _clean_node(data, partial=True, node=node)
    _check_name_free(clean.get("name"), node.id)
    # A secret is write-only (and compared encrypted would always differ): a submitted
    # one counts as changed; anything else only when its value differs.
    fields = sorted(k for k in clean if k not in SECRET_FIELDS and getattr(node, k) != clean[k])
    fields += sorted(k for k in clean if k in SECRET_FIELDS)
    commands = {k: {"old": getattr(node, k), "new": clean[k]}
                for k in COMMAND_FIELDS if k in fields}
    for key, value in clean.items():
        setattr(node, key, value)
    if "enabled" in clean and node.status == NodeStatus.DRAINING and clean["enabled"]:
        node.status = NodeStatus.UNKNOWN
    audit.record(actor, "node.update", "node", node.id, {"fields": fields})
    if commands:
        # What runs as the node's SSH user on every deployment: who changed it from
        # what to what is kept in full.
        audit.record(actor, "node.commands", "node", node.id, commands)
    db.session.commit()
    return node


def set_enabled(actor: User, node_id: int, enabled: bool) -> Node:
    return update_node(actor, node_id, {"enabled": enabled})


def drain_node(actor: User, node_id: int) -> Node:
    """Stop sending deploys to a node while it keeps serving what it has."""
    require_admin(actor)
    node = get_or_404(Node, node_id, "node")
    node.enabled = False
    node.status = NodeStatus.DRAINING
    audit.record(actor, "node.drain", "node", node.id)
    db.session.commit()
    return node


def sites_served(node: Node, limit: int = 10) -> list[str]:
    """Domains of active sites that this node serves (those of its pool)."""
    stmt = (
        select(Site.domain)
        .where(Site.pool_id == node.pool_id, Site.blocked.is_(False))
        .order_by(Site.domain)
        .limit(limit)
    )
    return list(db.session.scalars(stmt))


def delete_node(actor: User, node_id: int) -> None:
    require_admin(actor)
    node = get_or_404(Node, node_id, "node")
    if node.enabled:
        served = sites_served(node)
        if served:
            more = " and more" if len(served) == 10 else ""
            raise Conflict(
                f"node {node.name} still serves active sites: {', '.join(served)}{more}. "
                "Disable or drain it first, or move those sites to another pool."
            )
    audit.record(actor, "node.delete", "node", node.id, {"name": node.name})
    db.session.delete(node)
    db.session.commit()


def get_node(actor: User, node_id: int) -> Node:
    require_admin(actor)
    return get_or_404(Node, node_id, "node")


def get_node_by_name(actor: User, name: str) -> Node:
    require_admin(actor)
    node = db.session.scalar(select(Node).where(Node.name == name))
    if node is None:
        raise NotFound(f"no node named {name!r}")
    return node


def list_nodes(
    actor: User,
    *,
    page: int = 1,
    per_page: int = 50,
    pool: str | None = None,
    q: str | None = None,
    state: str | None = None,
    sort: str = "name",
) -> Page[Node]:
    """:param state: one of ``dashboard.NODE_STATES`` (the dashboard links here)."""
    from app.services.dashboard import NODE_STATES, node_state_filter

    require_admin(actor)
    orders = {"name": Node.name, "-last_seen": Node.last_seen.desc(), "status": Node.status}
    if sort not in orders:
        raise ValidationError("unknown sort", {"sort": f"one of {', '.join(orders)}"})
    stmt = select(Node).options(selectinload(Node.pool)).order_by(orders[sort], Node.name)
    if state:
        if state not in NODE_STATES:
            raise ValidationError("unknown state", {"state": f"one of {', '.join(NODE_STATES)}"})
        stmt = stmt.where(node_state_filter(state))
    if pool:
        stmt = stmt.join(Node.pool).where(Pool.name == pool)
    if q:
        stmt = stmt.where(func.lower(Node.name).like(f"%{q.lower()}%"))
    return paginate(stmt, page, per_page)


# ----------------------------------------------------------------------------- pools

_POOL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def list_pools(actor: User, q: str | None = None) -> list[Pool]:
    """Every account may see pool names: clients pick one for each site.

    :param q: part of the name or description.
    """
    stmt = select(Pool).order_by(Pool.name)
    if q:
        like = f"%{q.lower()}%"
        stmt = stmt.where(or_(func.lower(Pool.name).like(like),
                              func.lower(Pool.description).like(like)))
    return list(db.session.scalars(stmt))


@dataclass(frozen=True)
class PoolChoice:
    """What a person choosing a pool for a site needs to know of it."""

    name: str
    nodes: int
    engines: tuple[str, ...]

    @property
    def usable(self) -> bool:
        """A site in a pool without an enabled node would be served nowhere."""
        return self.nodes > 0


def pool_choices(actor: User) -> list[PoolChoice]:
    """Every pool with its enabled nodes' count and engines (two queries): clients
    see no node names, only what the pool offers."""
    counts: dict[int, int] = {}
    engines: dict[int, set[str]] = {}
    for pool_id, proxy_type, count in db.session.execute(
            select(Node.pool_id, Node.proxy_type, func.count()).where(Node.enabled.is_(True))
            .group_by(Node.pool_id, Node.proxy_type)):
        counts[pool_id] = counts.get(pool_id, 0) + count
        engines.setdefault(pool_id, set()).add(proxy_type.value)
    return [PoolChoice(pool.name, counts.get(pool.id, 0), tuple(sorted(engines.get(pool.id, ()))))
            for pool in list_pools(actor)]


def list_pools_page(actor: User, *, page: int = 1, per_page: int = 50) -> Page[Pool]:
    """Pools one page at a time (the API's list format); every account may see them."""
    return paginate(select(Pool).order_by(Pool.name), page, per_page)


def get_pool(actor: User, pool_id: int) -> Pool:
    require_admin(actor)
    return get_or_404(Pool, pool_id, "pool")


def pool_stats() -> dict[int, tuple[int, int]]:
    """(nodes, sites) per pool id, in two grouped queries."""
    nodes = dict(
        db.session.execute(select(Node.pool_id, func.count()).group_by(Node.pool_id)).all()
    )
    sites = dict(
        db.session.execute(select(Site.pool_id, func.count()).group_by(Site.pool_id)).all()
    )
    return {pid: (nodes.get(pid, 0), sites.get(pid, 0)) for pid in set(nodes) | set(sites)}


def _clean_pool(name: Any, description: Any) -> tuple[str, str]:
    errors = {}
    if not isinstance(name, str) or not _POOL_NAME.fullmatch(name):
        errors["name"] = "1 to 64 lowercase letters, digits, '_' or '-'"
    if not isinstance(description, str) or len(description) > 255:
        errors["description"] = "at most 255 characters"
    if errors:
        raise ValidationError("invalid pool", errors)
    return name, description


def create_pool(actor: User, name: Any, description: Any = "") -> Pool:
    require_admin(actor)
    name, description = _clean_pool(name, description or "")
    if _pool_by_name(name):
        raise ValidationError("invalid pool", {"name": "a pool with this name exists"})
    pool = Pool(name=name, description=description)
    db.session.add(pool)
    db.session.flush()
    audit.record(actor, "pool.create", "pool", pool.id, {"name": name})
    db.session.commit()
    return pool


def update_pool(actor: User, pool_id: int, name: Any, description: Any = "") -> Pool:
    require_admin(actor)
    pool = get_or_404(Pool, pool_id, "pool")
    name, description = _clean_pool(name, description or "")
    other = _pool_by_name(name)
    if other is not None and other.id != pool.id:
        raise ValidationError("invalid pool", {"name": "a pool with this name exists"})
    pool.name, pool.description = name, description
    audit.record(actor, "pool.update", "pool", pool.id, {"name": name})
    db.session.commit()
    return pool


def delete_pool(actor: User, pool_id: int) -> None:
    require_admin(actor)
    pool = get_or_404(Pool, pool_id, "pool")
    nodes, sites = pool_stats().get(pool.id, (0, 0))
    if nodes or sites:
        raise Conflict(f"pool {pool.name} still has {nodes} node(s) and {sites} site(s)")
    audit.record(actor, "pool.delete", "pool", pool.id, {"name": pool.name})
    db.session.delete(pool)
    db.session.commit()


def pin_first_key(node_id: int, line: str) -> None:
    """Trust on first use: store the key only if no other thread pinned one first."""
    with db.engine.begin() as conn:
        conn.execute(update(Node).where(Node.id == node_id, Node.host_key.is_(None))
                     .values(host_key=line, pending_host_key=None))
