"""Drift: whether the files on a node are still the ones its live version carries.
"""

from __future__ import annotations

import logging

from app.connector import (
    ConnectorError,
)
from app.extensions import db, ssh
from app.models import (
    Node,
    User,
)
from app.models.base import utcnow
from app.services import audit
from app.services.common import get_or_404, require_admin
from app.services.deployments.blobs import content_hash
from app.services.deployments.desired_state import ssh_target
from app.services.deployments.history import current_version, version_manifest
from app.services.deployments.release import describe_failure

logger = logging.getLogger(__name__)

def check_drift(actor: User | None, node_id: int) -> Node:
    """Compare the files on the node with its last deployed version and flag it.
    The node's files are compared by hash with the version's manifest: no stored
    content (private keys included) is decrypted for it."""
    if actor is not None:
        require_admin(actor)
    node = get_or_404(Node, node_id, "node")
    version = current_version(node.id)
    pool = ssh.pool()
    expected = version_manifest(version) if version is not None else {}
    try:
        actual = pool.read_tree(ssh_target(node), node.config_dir)
    except ConnectorError as exc:
        node.drift_details = f"could not read the node: {describe_failure(exc)}"
        node.drift_checked_at = utcnow()
        db.session.commit()
        return node
    differences = []
    for path in sorted(set(expected) | set(actual)):
        if path not in actual:
            differences.append(f"missing {path}")
        elif path not in expected:
            differences.append(f"unexpected {path}")
        elif content_hash(actual[path]) != expected[path]:
            differences.append(f"changed {path}")
    node.drifted = bool(differences)
    node.drift_details = "; ".join(differences)[:2000]
    node.drift_checked_at = utcnow()
    if differences:
        audit.record(actor, "node.drift", "node", node.id, {"differences": differences[:20]})
    db.session.commit()
    return node
