"""Node discovery: bring the node inventory in line with a ``nodes.yaml`` file.

The file lists nodes with the Node API field names (plus ``ssh_private_key_file``)
and, optionally, the pools they belong to.  The node name is the identity: a known
name is updated, a new one is created and marked discovered.  Every entry is applied
in its own transaction, so one bad entry is reported and the others still apply.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from app.errors import ValidationError
from app.extensions import db
from app.models import Node, Pool
from app.services import audit, nodes

log = logging.getLogger(__name__)

KEY_FILE_FIELD = "ssh_private_key_file"
MAX_KEY_FILE_BYTES = 16 * 1024
_TOP_LEVEL_KEYS = {"nodes", "pools"}
_POOL_KEYS = {"name", "description"}
# Messages about an entry as a whole rather than one of its fields.
ENTRY = "_"


@dataclass(frozen=True)
class InvalidEntry:
    """An entry that was not applied; ``fields`` maps each field to its reason.

    ``section`` is the top-level list the entry came from (``nodes`` or ``pools``) and
    ``index`` its position there, counted from 0.
    """

    index: int
    name: str | None
    fields: dict[str, str]
    section: str = "nodes"


@dataclass
class DiscoveryReport:
    """What one discovery run did; names are node names unless said otherwise."""

    created: list[str] = field(default_factory=list)
    # name -> fields that changed (secret fields by name only, never their values)
    updated: dict[str, list[str]] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)
    invalid: list[InvalidEntry] = field(default_factory=list)
    pools_created: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.invalid


class _StrictLoader(yaml.SafeLoader):
    """``safe_load`` keeps the last of two equal keys; an inventory typo must not
    silently win, so a repeated key is an error."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"found the key '{key[:64]}' twice", key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_inventory(path: str) -> tuple[list[Any], list[Any]]:
    """Read and shape-check the file: ``(pools, nodes)`` raw entries.

    :raises ValidationError: the file cannot be read, is not YAML, or is not a list
        of nodes (one message for the whole file; entries are checked later).
    """
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"{path}: cannot be read ({_reason(exc)})") from None
    try:
        document = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        raise ValidationError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None
    if isinstance(document, list):
        return [], document
    if not isinstance(document, dict):
        raise ValidationError(f"{path}: must be a list of nodes or a mapping with a 'nodes' list")
    unknown = sorted(str(k) for k in document if k not in _TOP_LEVEL_KEYS)
    if unknown:
        raise ValidationError(
            f"{path}: unknown top-level key '{unknown[0][:64]}' (expected 'nodes' and 'pools')"
        )
    pools, node_list = document.get("pools") or [], document.get("nodes")
    if not isinstance(node_list, list):
        raise ValidationError(f"{path}: 'nodes' must be a list of nodes")
    if not isinstance(pools, list):
        raise ValidationError(f"{path}: 'pools' must be a list of pools")
    return pools, node_list


def discover_nodes(path: str) -> DiscoveryReport:
    """Create or update the pools and nodes ``path`` describes (acting as the system).

    :raises ValidationError: the file as a whole is unusable (unreadable, not YAML, not
        a list of nodes); problems with single entries are in the report instead.
    """
    pools, entries = _load_inventory(path)
    base_dir = os.path.dirname(os.path.abspath(path))
    report = DiscoveryReport()
    pool_names = _duplicates(pools)
    for index, entry in enumerate(pools):
        problems = _pool_problems(entry, pool_names)
        if not problems:
            problems = _apply(partial(_apply_pool, entry, report))
        if problems:
            report.invalid.append(InvalidEntry(index, _name_of(entry), problems, "pools"))
    node_names = _duplicates(entries)
    for index, entry in enumerate(entries):
        problems = _entry_problems(entry, node_names)
        if not problems:
            problems = _apply(partial(_apply_node, entry, base_dir, report))
        elif isinstance(entry, dict):
            problems = {**_apply(partial(_check_node, entry, base_dir)), **problems}
        if problems:
            report.invalid.append(InvalidEntry(index, _name_of(entry), problems))
    return report


def log_report(report: DiscoveryReport, path: str) -> None:
    """One log line per problem so that an operator finds each bad entry by grep."""
    for entry in report.invalid:
        reasons = "; ".join(f"{k}: {v}" for k, v in entry.fields.items())
        log.warning("%s: %s[%d] %r is invalid: %s", path, entry.section, entry.index,
                    entry.name, reasons)
    log.info("%s: %d node(s) created, %d updated, %d unchanged, %d invalid entr(ies)", path,
             len(report.created), len(report.updated), len(report.unchanged),
             len(report.invalid))


def _apply(step: Callable[[], None]) -> dict[str, str]:
    """Run one entry's step; a failure rolls back that entry alone and becomes its
    reasons."""
    try:
        step()
    except ValidationError as exc:
        db.session.rollback()
        return dict(exc.fields) or {ENTRY: exc.message}
    except SQLAlchemyError as exc:
        db.session.rollback()
        log.exception("discovery could not save an entry")
        return {ENTRY: f"could not be saved ({type(exc).__name__})"}
    return {}


# ----------------------------------------------------------------------------- pools


def _pool_problems(entry: Any, duplicated: dict[str, list[int]]) -> dict[str, str]:
    if not isinstance(entry, dict):
        return {ENTRY: "must be a mapping with 'name' and 'description'"}
    problems = {str(k): "unknown field" for k in entry if k not in _POOL_KEYS}
    if isinstance(entry.get("name"), str) and entry["name"] in duplicated:
        problems["name"] = _duplicate_reason(duplicated[entry["name"]])
    return problems


def _apply_pool(entry: dict[str, Any], report: DiscoveryReport) -> None:
    """Create a missing pool; an existing one is left as the admin keeps it."""
    name, description = nodes._clean_pool(entry.get("name"), entry.get("description") or "")
    if _pool_named(name) is not None:
        return
    pool = Pool(name=name, description=description)
    db.session.add(pool)
    try:
        db.session.flush()
    except IntegrityError:
        # Another process created it between the lookup and the insert.
        db.session.rollback()
        if _pool_named(name) is None:
            raise
        return
    audit.record(None, "pool.create", "pool", pool.id, {"name": name})
    db.session.commit()
    report.pools_created.append(name)


def _pool_named(name: str) -> Pool | None:
    return db.session.scalar(select(Pool).where(Pool.name == name))


# ----------------------------------------------------------------------------- nodes


def _entry_problems(entry: Any, duplicated: dict[str, list[int]]) -> dict[str, str]:
    """Problems the node service cannot see: the entry's shape and the file as a whole."""
    if not isinstance(entry, dict):
        return {ENTRY: "must be a mapping of node fields"}
    problems: dict[str, str] = {}
    name = entry.get("name")
    if isinstance(name, str) and name in duplicated:
        problems["name"] = _duplicate_reason(duplicated[name])
    if entry.get(KEY_FILE_FIELD) and entry.get("ssh_private_key"):
        problems[KEY_FILE_FIELD] = "give ssh_private_key or ssh_private_key_file, not both"
    return problems


def _check_node(entry: dict[str, Any], base_dir: str) -> None:
    """Validate an entry that will not be applied anyway, so that the operator sees
    every reason and fixes the file in one round."""
    data = _node_data(entry, base_dir)
    existing = _node_named(data.get("name"))
    nodes._clean_node(data, partial=existing is not None, node=existing)


def _node_data(entry: dict[str, Any], base_dir: str) -> dict[str, Any]:
    """The entry as the node service's input: the key file is read here, on the
    control plane, relative to the inventory file.

    :raises ValidationError: the key file cannot be read or holds no usable key.
    """
    data = {str(k): v for k, v in entry.items() if k != KEY_FILE_FIELD}
    if KEY_FILE_FIELD not in entry:
        return data
    data["ssh_private_key"] = _read_key_file(entry[KEY_FILE_FIELD], base_dir)
    try:
        nodes.validate_private_key(data["ssh_private_key"])
    except ValueError as exc:
        raise ValidationError("invalid node", {KEY_FILE_FIELD: str(exc)}) from None
    return data


def _read_key_file(value: Any, base_dir: str) -> str:
    if not isinstance(value, str) or not value or any(ord(c) < 32 for c in value):
        raise ValidationError("invalid node", {KEY_FILE_FIELD: "must be a file path"})
    path = os.path.join(base_dir, os.path.expanduser(value))
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise ValidationError(
            "invalid node", {KEY_FILE_FIELD: f"cannot be read ({_reason(exc)})"}
        ) from None
    if len(raw) > MAX_KEY_FILE_BYTES:
        raise ValidationError("invalid node", {KEY_FILE_FIELD: "is too large for a key file"})
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise ValidationError(
            "invalid node", {KEY_FILE_FIELD: "must be a PEM or OpenSSH private key"}
        ) from None


def _apply_node(entry: dict[str, Any], base_dir: str, report: DiscoveryReport) -> None:
    data = _node_data(entry, base_dir)
    name = data.get("name")
    node = _node_named(name)
    if node is None:
        try:
            nodes.create_node(None, data, discovered=True)
        except (IntegrityError, ValidationError):
            db.session.rollback()
            # Several app processes may discover at once: if one of them created the
            # node since our lookup, the unique name turned our insert away and the
            # entry becomes an update of that node.
            node = _node_named(name)
            if node is None:
                raise
        else:
            report.created.append(str(name))
            return
    changed = _update_node(node, data)
    if changed:
        report.updated[node.name] = changed
    else:
        report.unchanged.append(node.name)


def _update_node(node: Node, data: dict[str, Any]) -> list[str]:
    """Apply only what the entry states and differs; returns the changed fields."""
    clean = nodes._clean_node(data, partial=True, node=node)
    changed = sorted(k for k, v in clean.items() if _current(node, k) != _comparable(v))
    if not changed and node.is_discovered:
        return []
    newly_discovered = not node.is_discovered
    node.is_discovered = True
    if changed:
        # update_node keeps the node rules (e.g. re-enabling a drained node) in one
        # place; the discovered flag rides along in its commit.
        nodes.update_node(None, node.id, {k: data[k] for k in changed})
    else:
        audit.record(None, "node.update", "node", node.id,
                     {"fields": ["is_discovered"]})
        db.session.commit()
    return sorted(changed + (["is_discovered"] if newly_discovered else []))


def _current(node: Node, key: str) -> Any:
    return node.pool_id if key == "pool" else getattr(node, key)


def _comparable(value: Any) -> Any:
    return value.id if isinstance(value, Pool) else value


def _node_named(name: Any) -> Node | None:
    if not isinstance(name, str):
        return None
    return db.session.scalar(select(Node).where(Node.name == name))


# ----------------------------------------------------------------------------- helpers


def _name_of(entry: Any) -> str | None:
    name = entry.get("name") if isinstance(entry, dict) else None
    return name if isinstance(name, str) else None


def _duplicates(entries: list[Any]) -> dict[str, list[int]]:
    """Names used by more than one entry, with their indexes: none of those entries is
    applied, because which one the operator meant cannot be known."""
    seen: dict[str, list[int]] = {}
    for index, entry in enumerate(entries):
        name = _name_of(entry)
        if name is not None:
            seen.setdefault(name, []).append(index)
    return {name: where for name, where in seen.items() if len(where) > 1}


def _duplicate_reason(indexes: list[int]) -> str:
    return f"appears more than once in the file (entries {', '.join(map(str, indexes))})"


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Problem and position only: PyYAML's own message quotes the offending line,
    which may be part of a private key."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "cannot be parsed"
    if mark is None:
        return str(problem)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
