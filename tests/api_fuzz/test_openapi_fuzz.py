"""Schemathesis against ``/api/v1/openapi.json``: every operation, as a client and as
an administrator, on real rows; no answer is a 5xx and every answer is one the
document describes (status code, content type, body).

Bounded and reproducible: ``MAX_EXAMPLES`` generated requests per operation and role
on top of schemathesis's examples and boundary cases, derandomized (the same requests
on every run), no example database. It runs once, on SQLite: scripts/test-inner.sh
leaves this folder out of the PostgreSQL run, as it does the browser journeys.

Destructive operations run for real, on rows made afresh for each operation and role.
The tokens the run acts with are not among the ids it aims at; when a request revokes
one all the same (DELETE of a small id that is the run's own, a new password for the
acting user), the next request gets a new token.  The acting users are never deleted:
the service refuses an administrator's own account, and the client owns a site (409).
"""

from __future__ import annotations

import base64
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
import schemathesis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from flask import Flask
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import select

from app.executor import executor
from app.extensions import db
from app.models import Alert, DeploymentStatus, NodeDeployment, Pool, User
from app.models.base import utcnow
from app.services import (
    alerts,
    dns_providers,
    domain_grants,
    jobs,
    nodes,
    tokens,
)
from tests import factories, pki
from tests.api_fuzz.figures import ANSWERS
from tests.conftest import make_app, reset_database

# 2 roles x ~60 operations x MAX_EXAMPLES requests, plus schemathesis's own
# examples and boundary cases (about as many again): some 100 seconds on one core.
MAX_EXAMPLES = 50
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
ROLES = ("admin", "client")

# Node checks then fail at once on a refused port instead of retrying with backoff.
APP = make_app(SSH_RETRIES=0, SSH_CONNECT_TIMEOUT=1.0)
schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", APP)

# Random bodies seldom get past the validators (a domain, a PEM, a key), so half the
# bodies of these operations are valid ones, made unique by ``n``: the success
# answers are checked against the document too.
_SSH_KEY = factories.ssh_key()
_TSIG_SECRET = base64.b64encode(b"k" * 32).decode()
_CA = pki.root()
_CERT, _CERT_KEY = pki.leaf(_CA, ["alice.example.com"])
VALID_BODIES: dict[str, Callable[[int], Any]] = {
    "POST /api/v1/tokens": lambda n: {
        "username": ("root", "alice")[n % 2], "password": factories.PASSWORD,
        "name": f"fuzz {n}", "expires_in_days": 1 + n % 30, "read_only": n % 3 == 0},
    "POST /api/v1/sites": lambda n: {
        "domain": f"fuzz{n}.example.com", "aliases": [f"www.fuzz{n}.example.com"],
        "backends": [{"host": "127.0.0.1", "port": 1024 + n % 1000}],
        "ssl_mode": ("none", "self_signed")[n % 2], "rate_limit": None},
    "PUT /api/v1/sites/{site_id}": lambda n: {"force_https": n % 2 == 0, "hsts": True},
    "PATCH /api/v1/sites/{site_id}": lambda n: {
        "cache": {"enabled": True, "ttl": 60 + n % 600},
        "rate_limit": {"requests_per_second": 1 + n % 50}},
    "PUT /api/v1/sites/{site_id}/certificate": lambda n: {
        "chain_pem": pki.pem(_CERT) + _CA.pem, "key_pem": pki.key_pem(_CERT_KEY)},
    "POST /api/v1/sites/{site_id}/deploy": lambda n: {},
    "POST /api/v1/nodes": lambda n: {
        "name": f"edge-fuzz-{n}", "host": f"127.0.0.{2 + n % 200}",
        "ssh_private_key": _SSH_KEY, "proxy_type": ("nginx", "caddy", "traefik")[n % 3]},
    "PUT /api/v1/nodes/{node_id}": lambda n: {"http_port": 8000 + n % 1000},
    "PATCH /api/v1/nodes/{node_id}": lambda n: {"enabled": n % 2 == 0},
    "POST /api/v1/nodes/{node_id}/rollback": lambda n: {"version": 1},
    "POST /api/v1/pools": lambda n: {"name": f"pool-{n}", "description": "fuzz"},
    "PUT /api/v1/pools/{pool_id}": lambda n: {"name": f"pool-{n}"},
    "POST /api/v1/users": lambda n: {
        "username": f"user{n}", "email": f"user{n}@example.com",
        "role": ("client", "admin")[n % 2], "max_sites": n % 10},
    "PUT /api/v1/users/{user_id}": lambda n: {"email": f"renamed{n}@example.com"},
    "PATCH /api/v1/users/{user_id}": lambda n: {"max_sites": n % 10},
    "POST /api/v1/dns-providers": lambda n: {
        "name": f"dns{n}", "zone": f"zone{n}.example.com", "server": "127.0.0.1",
        "port": 5300, "tsig_name": "acme-key", "tsig_secret": _TSIG_SECRET},
    "PUT /api/v1/dns-providers/{provider_id}": lambda n: {"port": 5300 + n % 100},
    "PATCH /api/v1/dns-providers/{provider_id}": lambda n: {"tsig_name": f"key{n}"},
    "POST /api/v1/users/{user_id}/domains": lambda n: {"name": f"shop{n}.example.net"},
    "POST /api/v1/alert-rules": lambda n: {
        "name": f"rule {n}", "kind": ("cpu", "site_down", "cert_expiring")[n % 3],
        "threshold": 1 + n % 14, "duration_seconds": n % 600, "pool": "default"},
    "PATCH /api/v1/alert-rules/{rule_id}": lambda n: {"enabled": n % 2 == 0,
                                                      "renotify_seconds": 60 * (n % 30)},
    "POST /api/v1/silences": lambda n: {
        ("node", "pool", "site")[n % 3]: ("edge-1", "default", "alice.example.com")[n % 3],
        "ends_at": (utcnow() + timedelta(minutes=1 + n % 600)).isoformat()},
    "PATCH /api/v1/silences/{silence_id}": lambda n: {"reason": f"maintenance {n}"},
}


def _loopback_only() -> bool:
    """The fuzzer points nodes and DNS servers anywhere; only a namespace without a
    route off the machine (scripts/test-inner.sh) makes that harmless."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # UDP connect sends nothing
    except OSError:
        return True
    finally:
        probe.close()
    return False


@pytest.fixture(autouse=True)
def _inside_the_namespace() -> None:
    """Refuse loudly rather than send traffic off the machine, or pass untried."""
    if not _loopback_only():
        pytest.fail("run inside the loopback-only namespace (scripts/test.sh): the fuzzer "
                    "points nodes and DNS servers at any address it generates")


@dataclass
class World:
    """The rows of one operation's run: ids the fuzzer may aim at, and for each role
    the user it acts as, with a token minted again when the run revoked it."""

    user_ids: dict[str, int]
    ids: dict[str, list[int]] = field(default_factory=dict)
    _headers: dict[str, dict[str, str]] = field(default_factory=dict)

    def headers(self, role: str) -> dict[str, str]:
        with APP.app_context():
            current = self._headers.get(role)
            if current is None or tokens.authenticate_token(_raw(current)) is None:
                user = db.session.get(User, self.user_ids[role])
                assert user is not None
                _, raw = tokens.create_token(user, "fuzz")
                current = self._headers[role] = {"Authorization": f"Bearer {raw}"}
            return current


def _raw(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


WORLD: dict[str, World] = {}


def _refused() -> str:
    raise ConnectionRefusedError("edge-1 refused the connection")


def _host_key() -> str:
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH,
                               serialization.PublicFormat.OpenSSH).decode()


def _build_world() -> World:
    admin = factories.make_user("admin", "root")
    alice = factories.make_user("client", "alice")
    bob = factories.make_user("client", "bob")
    carol = factories.make_user("client", "carol")  # owns nothing: deletable
    node = factories.make_node("edge-1")
    # A pinned host key, and a second node that presented a changed one.
    changed = factories.make_node("edge-2")
    node.host_key, changed.host_key = _host_key(), _host_key()
    changed.pending_host_key = _host_key()
    spare_pool = nodes.create_pool(admin, name="spare")
    jobs.run_recorded("drift", lambda: "0 nodes drifted", "fuzz")
    jobs.run_recorded("node_health", _refused, "fuzz")
    alice_site = factories.make_site(alice, "alice.example.com", ssl_mode="self_signed")
    bob_site = factories.make_site(bob, "bob.example.com")
    rollouts = [factories.make_rollout(alice_site), factories.make_rollout(bob_site)]
    version = factories.make_version(node)
    # One node's part of each rollout: a failure told in words, and a success.
    failed, succeeded = rollouts
    failed.status = DeploymentStatus.FAILED
    failed.error = "1 of 1 nodes failed"
    db.session.add_all([
        NodeDeployment(rollout_id=failed.id, site_id=alice_site.id, node_id=node.id,
                   node_name=node.name, status=DeploymentStatus.FAILED, step="connect",
                   steps=[{"step": "connect", "seconds": 0.5, "ok": False}],
                   error="ssh: [Errno 111] Connection refused"),
        NodeDeployment(rollout_id=succeeded.id, site_id=bob_site.id, node_id=node.id,
                   node_name=node.name, config_version_id=version.id,
                   status=DeploymentStatus.SUCCEEDED,
                   steps=[{"step": "upload", "seconds": 0.1, "ok": True}]),
    ])
    db.session.commit()
    provider = dns_providers.create_provider(admin, {
        "name": "main", "zone": "example.com", "server": "127.0.0.1", "port": 5300,
        "tsig_name": "acme-key", "tsig_secret": _TSIG_SECRET})
    given = domain_grants.grant(admin, alice.id, "alice.example.org")[0]
    # Alerts: the failed rollout of Alice's site raises one for her, and silences.
    rule = alerts.create_rule(admin, {"name": "failed", "kind": "deployment_failed"})
    alerts.evaluate()
    silence = alerts.create_silence(admin, {"node": "edge-1",
                                            "ends_at": utcnow() + timedelta(hours=1)})
    # Tokens the run may revoke; the ones it acts with are minted by World.headers.
    spares = [tokens.create_token(user, "spare")[0].id for user in (admin, alice, bob)]
    default_pool = db.session.query(Pool).filter_by(name="default").one()
    world = World(user_ids={"admin": admin.id, "client": alice.id})
    world.ids = {
        "site_id": [alice_site.id, bob_site.id],
        "node_id": [node.id, changed.id],
        "rollout_id": [r.id for r in rollouts],
        "version_id": [version.id],
        "token_id": spares,
        "user_id": [bob.id, carol.id, alice.id],
        "pool_id": [default_pool.id, spare_pool.id],
        "provider_id": [provider.id],
        "grant_id": [given.id],
        "alert_id": list(db.session.scalars(select(Alert.id))),
        "rule_id": [rule.id],
        "silence_id": [silence.id],
    }
    return world


@pytest.fixture()
def world(app: Flask, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """Fresh rows for each operation and role. ``app`` has run the migrations."""
    # Rollouts and certificate orders are recorded but not run: the background work
    # is the integration tests' subject, and would race the next reset.
    monkeypatch.setattr(executor, "submit", lambda *args, **kwargs: None)
    with APP.app_context():
        reset_database()
        WORLD["current"] = _build_world()
        db.session.remove()
    # Each request then runs in an app context of its own, as in production.
    yield WORLD["current"]


@schema.hook
def flatmap_path_parameters(context: schemathesis.HookContext,
                            path_parameters: dict[str, Any] | None) -> st.SearchStrategy[Any]:
    """Half the time aim at rows that exist (one's own, another tenant's, the
    acting user's), so that answers other than 404 are exercised."""
    if not path_parameters:
        return st.just(path_parameters)

    def aim(index: int) -> dict[str, Any]:
        ids = WORLD["current"].ids
        known = {name: ids[name][index % len(ids[name])]
                 for name in path_parameters if name in ids}
        return {**path_parameters, **known}

    return st.one_of(st.just(path_parameters), st.integers(0, 5).map(aim))


@schema.hook
def flatmap_body(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    """Half the bodies of the operations in ``VALID_BODIES`` are valid ones."""
    make = VALID_BODIES.get(context.operation.label)
    if make is None:
        return st.just(body)
    return st.one_of(st.just(body), st.integers(1, 10**6).map(make))


@pytest.mark.parametrize("role", ROLES)
@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_answer_is_documented(case: schemathesis.Case, role: str, world: World) -> None:
    headers = world.headers(role)
    response = case.call(headers=headers)
    ANSWERS[role, case.operation.label, f"{response.status_code // 100}xx"] += 1
    case.validate_response(response, checks=CHECKS, headers=headers)
