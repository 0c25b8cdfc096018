"""Test data built through the services, so fixtures obey the same rules as users."""

from __future__ import annotations

import itertools
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from app.extensions import db
from app.models import (
    ConfigVersion,
    DeploymentStatus,
    Node,
    Rollout,
    RolloutKind,
    Site,
    User,
)
from app.services import nodes, sites, users

PASSWORD = "correct-horse-battery-9"
_seq = itertools.count(1)


def make_user(role: str = "client", username: str | None = None, **extra: Any) -> User:
    n = next(_seq)
    username = username or f"{role}{n}"
    data = {"username": username, "email": f"{username}@example.com", "role": role,
            "password": PASSWORD, **extra}
    user, _ = users.create_user(None, data)
    return user


def ssh_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()


def make_node(name: str | None = None, **extra: Any) -> Node:
    n = next(_seq)
    data = {"name": name or f"node{n}", "host": f"127.0.0.{2 + n % 200}",
            "ssh_private_key": ssh_key(), **extra}
    return nodes.create_node(None, data)


def make_site(owner: User, domain: str | None = None, **extra: Any) -> Site:
    n = next(_seq)
    data = {"domain": domain or f"site{n}.example.com",
            "backends": [{"host": "127.0.0.1", "port": 8080, "weight": 1}], **extra}
    return sites.create_site(owner, data)


def make_rollout(site: Site) -> Rollout:
    """A finished deployment of the site, without nodes to reach (listing and access
    tests; real deployments are in the integration tests)."""
    rollout = Rollout(kind=RolloutKind.DEPLOY, site_id=site.id, owner_id=site.owner_id,
                      pool_id=site.pool_id, status=DeploymentStatus.SUCCEEDED)
    db.session.add(rollout)
    db.session.commit()
    return rollout


def make_version(node: Node, files: dict[str, str] | None = None) -> ConfigVersion:
    """A recorded config version of the node, as a deployment leaves one."""
    from app.services.deployments import files_digest
    from app.services.deployments.blobs import store_files

    files = files or {"rpcc.conf": "# empty\n"}
    number = db.session.query(ConfigVersion).filter_by(node_id=node.id).count() + 1
    version = ConfigVersion(node_id=node.id, version=number, manifest=store_files([files])[0],
                            sha256=files_digest(files), site_versions={},
                            file_count=len(files))
    db.session.add(version)
    db.session.commit()
    return version
