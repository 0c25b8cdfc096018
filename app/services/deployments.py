"""Deploying configuration to the fleet: the contract of DESIGN.md's "Deployment".

A node's desired state is the full file set of every site of its pool.  On the node,
the managed directory (``config_dir``) is a symbolic link to one release directory
beside it (``<config_dir>.releases/v<N>-<random>``).  A deployment uploads a new
release, swaps the link with one atomic rename, tests, reloads and verifies; any
failure swaps the link back, so the previous release, untouched, is live again byte
for byte.  A ``config_dir`` that is still a plain directory (the operator's, before
our first deployment) is moved into the releases directory once and restored as it
was if that first deployment fails.

Rendering happens after the node's lease is taken, so of two deployments racing for
a node the one that gets it last carries the newest state of the sites.
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import json
import logging
import secrets
import shlex
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app
from sqlalchemy import func, select, update
from sqlalchemy.orm import selectinload

from app.connector import (
    ConnectorError,
    HostKeyChanged,
    SSHPool,
    SSHTarget,
)
from app.errors import Conflict, NotFound, ValidationError
from app.extensions import db
from app.models import (
    ConfigVersion,
    Deployment,
    DeploymentStatus,
    Node,
    NodeStatus,
    Rollout,
    RolloutKind,
    Site,
    SiteStatus,
    User,
)
from app.models.base import utcnow
from app.proxy import get_engine
from app.proxy.base import PROBE_HOST, PROBE_PATH
from app.services import audit, rendering
from app.services.common import Page, get_or_404, get_scoped, paginate, require_admin, scoped
from app.services.node_lock import NodeLease, node_lease

logger = logging.getLogger(__name__)

RELEASE_PREFIX = "v"
ADOPTED_PREFIX = "adopted-"
PRIVATE_KEY_MARK = "PRIVATE KEY-----"
MASKED_KEY = "# private key withheld\n"
# After a reload: how long the old generation may still answer, then how many fresh
# connections in a row must see the new configuration.
PROBE_SETTLE_SECONDS = 0.15
PROBE_CONFIRMATIONS = 3


# --------------------------------------------------------------------------- #
# The connector, one per app process                                          #
# --------------------------------------------------------------------------- #

def _pin_first_key(node_id: int, line: str) -> None:
    """Trust on first use: store the key only if no other thread pinned one first."""
    with db.engine.begin() as conn:
        conn.execute(update(Node).where(Node.id == node_id, Node.host_key.is_(None))
                     .values(host_key=line, pending_host_key=None))


def connector(app: Flask | None = None) -> SSHPool:
    """The process's SSH pool (connections are kept between deployments)."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    with _POOL_LOCK:
        pool: SSHPool | None = app.extensions.get("rpcc_ssh_pool")
        if pool is None:
            cfg = app.config
            pool = SSHPool(connect_timeout=cfg["SSH_CONNECT_TIMEOUT"],
                           operation_timeout=cfg["SSH_OPERATION_TIMEOUT"],
                           idle_timeout=cfg["SSH_IDLE_TIMEOUT"],
                           retries=cfg["SSH_RETRIES"],
                           on_first_contact=_pin_first_key)
            app.extensions["rpcc_ssh_pool"] = pool
        return pool


def close_connector(app: Flask) -> None:
    with _POOL_LOCK:
        pool = app.extensions.pop("rpcc_ssh_pool", None)
    if pool is not None:
        pool.close()


_POOL_LOCK = threading.Lock()


def ssh_target(node: Node) -> SSHTarget:
    return SSHTarget(node_id=node.id, host=node.host, port=node.ssh_port,
                     username=node.ssh_user, private_key=node.ssh_private_key,
                     password=node.ssh_password, host_key=node.host_key)


# --------------------------------------------------------------------------- #
# Rendering a node's desired state                                            #
# --------------------------------------------------------------------------- #

def pool_sites(pool_id: int) -> list[Site]:
    stmt = (select(Site).where(Site.pool_id == pool_id)
            .options(selectinload(Site.hostnames), selectinload(Site.backends),
                     selectinload(Site.basic_auth_users))
            .order_by(Site.domain))
    return list(db.session.scalars(stmt))


def render_node(node: Node) -> tuple[dict[str, str], dict[str, int], list[str]]:
    """The node's files (with the engine's probe), the site versions they carry, and
    the sites' domains."""
    sites = pool_sites(node.pool_id)
    engine = get_engine(node.proxy_type.value)
    spec = rendering.node_spec(node)
    files = engine.render(spec, [rendering.site_spec(site) for site in sites]).files
    files.update(engine.probe(spec, probe_token(files)))
    versions = {str(site.id): site.config_version for site in sites}
    return files, versions, [site.domain for site in sites]


def probe_token(files: dict[str, str]) -> str:
    """What the probe answers: a digest of the configuration it ships with, so that
    the same configuration always carries the same token (and a rollback's files
    still name theirs)."""
    return files_digest(files)[:32]


def expected_probe(node: Node, files: dict[str, str]) -> str | None:
    """The token a node answers once it runs ``files``; None for engines without a
    probe (their reload returns when the configuration is live)."""
    engine = get_engine(node.proxy_type.value)
    names = set(engine.probe(rendering.node_spec(node), "-"))
    if not names or not names <= set(files):
        return None
    return probe_token({p: t for p, t in files.items() if p not in names})


def files_digest(files: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.encode() + b"\0" + files[path].encode() + b"\0")
    return digest.hexdigest()


def version_files(version: ConfigVersion) -> dict[str, str]:
    files: dict[str, str] = json.loads(version.files)
    return files


def current_version(node_id: int) -> ConfigVersion | None:
    """The version the node last took successfully (what drift is measured against)."""
    stmt = (select(ConfigVersion).join(Deployment, Deployment.config_version_id == ConfigVersion.id)
            .where(Deployment.node_id == node_id,
                   Deployment.status == DeploymentStatus.SUCCEEDED)
            .order_by(Deployment.finished_at.desc(), Deployment.id.desc()).limit(1))
    return db.session.scalar(stmt)


# --------------------------------------------------------------------------- #
# One node                                                                    #
# --------------------------------------------------------------------------- #

class StepFailed(Exception):
    """A step failed; ``restored`` says whether the previous release is live again."""

    def __init__(self, step: str, message: str, *, restored: bool, after_swap: bool) -> None:
        super().__init__(message)
        self.step = step
        self.message = message
        self.restored = restored
        self.after_swap = after_swap


@dataclass
class NodeJob:
    """Everything the remote part needs, detached from the database session."""

    target: SSHTarget
    config_dir: str
    files: dict[str, bytes]
    release_name: str
    test_command: list[str]
    reload_command: list[str]
    verify_address: str
    verify_port: int
    verify_hosts: list[str]
    probe: str | None
    command_timeout: float
    verify_timeout: float
    steps: list[dict[str, Any]] = field(default_factory=list)
    on_step: Callable[[str], None] = lambda step: None


def _output(result: Any) -> str:
    text = (result.stderr or "") + (result.stdout or "")
    return text.strip()[-2000:] or f"exit status {result.exit_status}"


class _Remote:
    """The remote half of one node's deployment (upload, swap, test, reload, verify,
    and putting things back)."""

    def __init__(self, pool: SSHPool, job: NodeJob) -> None:
        self.pool = pool
        self.job = job
        self.config_dir = job.config_dir.rstrip("/")
        self.releases = self.config_dir + ".releases"
        self.release = f"{self.releases}/{job.release_name}"
        self.previous: str | None = None
        self.adopted = False
        self.swapped = False
        self.reloaded = False
        self.current = ""

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.current = name
        self.job.on_step(name)
        started = time.monotonic()
        ok = False
        try:
            yield
            ok = True
        finally:
            self.job.steps.append({"step": name, "seconds": round(time.monotonic() - started, 4),
                                   "ok": ok})

    def run(self) -> None:
        """:raises StepFailed: for any failure, after putting the previous release back
            once the swap happened (a lost connection, an expired lease or a timeout
            mid-way included: nothing half-deployed stays live)."""
        try:
            self._steps()
        except StepFailed:
            raise
        except HostKeyChanged:
            if not self.swapped:
                raise  # nothing was sent; the caller records the key to accept
            self.restore(reload=self.reloaded)  # reconnecting fails too, but try
            raise
        except Exception as exc:
            restored = self.restore(reload=self.reloaded) if self.swapped else True
            raise StepFailed(self.current, _describe(exc), restored=restored,
                             after_swap=self.swapped) from exc
        # The new release is live and verified: a failure from here on is no reason to
        # roll back (the next deployment's sweep removes what is left).
        try:
            with self.step("cleanup"):
                if self.previous and not self.adopted and self._ours(self.previous):
                    self.pool.remove_tree(self.job.target, self._absolute(self.previous))
        except Exception:
            logger.warning("node %s: could not remove the previous release",
                           self.job.target.node_id, exc_info=True)

    def _steps(self) -> None:
        pool, target, job = self.pool, self.job.target, self.job
        with self.step("upload"):
            kind = pool.kind(target, self.config_dir)
            if kind == "file":
                raise StepFailed("upload", f"{self.config_dir} is a file, not a directory",
                                 restored=True, after_swap=False)
            if kind == "link":
                self.previous = pool.readlink(target, self.config_dir)
            pool.mkdir_p(target, self.releases)
            self._sweep(kind)
            pool.upload_tree(target, self.release, job.files)
        with self.step("swap"):
            if kind == "dir":
                # Our first deployment: the operator's directory is kept aside, intact.
                self.previous = f"{self.releases}/{ADOPTED_PREFIX}{self.job.release_name}"
                pool.rename(target, self.config_dir, self.previous)
                self.adopted = True
            self.swapped = True
            pool.symlink_swap(target, self.config_dir, self.release)
        with self.step("test"):
            result = pool.run(target, job.test_command, timeout=job.command_timeout)
            if not result.ok:
                self._fail("test", f"the node's test command refused the configuration: "
                                   f"{_output(result)}", reload=False)
        with self.step("reload"):
            self.reloaded = True  # from here on, the new release may be loaded
            result = pool.run(target, job.reload_command, timeout=job.command_timeout)
            if not result.ok:
                self._fail("reload", f"reload failed: {_output(result)}", reload=True)
        with self.step("verify"):
            problem = wait_for_probe(job.verify_address, job.verify_port, job.probe,
                                     job.verify_timeout)
            problem = problem or verify_sites(job.verify_address, job.verify_port,
                                              job.verify_hosts, job.verify_timeout)
            if problem:
                self._fail("verify", problem, reload=True)

    def _absolute(self, link: str) -> str:
        return link if link.startswith("/") else f"{self.config_dir.rsplit('/', 1)[0]}/{link}"

    def _ours(self, path: str) -> bool:
        return self._absolute(path).startswith(f"{self.releases}/{RELEASE_PREFIX}")

    def _sweep(self, kind: str | None) -> None:
        """Remove releases left by interrupted deployments (never the live one, never
        an adopted operator directory)."""
        listing = self.pool.run(self.job.target, ["find", self.releases, "-mindepth", "1",
                                                  "-maxdepth", "1", "-name",
                                                  f"{RELEASE_PREFIX}*"],
                                timeout=self.job.command_timeout)
        live = self._absolute(self.previous) if kind == "link" and self.previous else None
        for path in listing.stdout.split("\n"):
            if path and path != live:
                self.pool.remove_tree(self.job.target, path)

    def _fail(self, step: str, message: str, *, reload: bool) -> None:
        restored = self.restore(reload=reload)
        raise StepFailed(step, message, restored=restored, after_swap=True)

    def restore(self, *, reload: bool) -> bool:
        """Put the previous release back (and reload it when the new one may have been
        loaded).  Returns whether that worked."""
        pool, target = self.pool, self.job.target
        try:
            if self.swapped:
                if self.adopted and self.previous:
                    pool.remove_tree(target, self.config_dir)
                    pool.rename(target, self.previous, self.config_dir)
                elif self.previous:
                    pool.symlink_swap(target, self.config_dir, self.previous)
                else:
                    pool.remove_tree(target, self.config_dir)
            pool.remove_tree(target, self.release)
            if reload:
                pool.run(target, self.job.reload_command, timeout=self.job.command_timeout)
            return True
        except Exception:
            logger.exception("node %s: could not restore the previous release",
                             self.job.target.node_id)
            return False


def wait_for_probe(address: str, port: int, token: str | None, timeout: float) -> str:
    """Wait until the node answers with the new configuration's token: right after a
    reload the old workers may still be the ones answering.  Returns the problem."""
    if token is None:
        return ""
    deadline = time.monotonic() + timeout
    seen = ""
    confirmed = 0
    while True:
        try:
            status, body = _http_get(address, port, PROBE_HOST, PROBE_PATH,
                                     max(0.5, deadline - time.monotonic()))
            if status == 200 and body.strip() == token:
                # A new worker answered, but nginx's master lets the old workers accept
                # for another 100 ms before telling them to stop: let that pass, then
                # see the new configuration on a few fresh connections in a row.
                if confirmed == 0:
                    time.sleep(PROBE_SETTLE_SECONDS)
                confirmed += 1
                if confirmed > PROBE_CONFIRMATIONS:
                    return ""
                continue
            confirmed = 0
            seen = f"it answered HTTP {status} {body[:40]!r}"
        except (OSError, http.client.HTTPException) as exc:
            confirmed = 0
            seen = f"no answer: {exc}"
        if time.monotonic() >= deadline:
            return f"the node did not load the new configuration within {timeout:g} s ({seen})"
        time.sleep(0.02)


def verify_sites(address: str, port: int, hosts: list[str], timeout: float) -> str:
    """Ask the node for each site: any HTTP answer below 500 proves the new config
    serves it.  Retried within ``timeout``: right after a reload an old worker may
    still be exiting.  Returns the problem, or "" when every site answered."""
    problems = []
    for host in hosts:
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            try:
                status = _http_status(address, port, host, max(0.5, deadline - time.monotonic()))
                if status < 500:
                    last = ""
                    break
                last = f"{host} answered HTTP {status}"
            except (OSError, http.client.HTTPException) as exc:
                last = f"{host} did not answer: {exc}"
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        if last:
            problems.append(last)
    return "; ".join(problems)


def _http_status(address: str, port: int, host: str, timeout: float) -> int:
    return _http_get(address, port, host, "/", timeout)[0]


def _http_get(address: str, port: int, host: str, path: str, timeout: float) -> tuple[int, str]:
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host, "User-Agent": "rpcc-verify/1"})
        response = conn.getresponse()
        return response.status, response.read(65536).decode(errors="replace")
    finally:
        conn.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, HostKeyChanged):
        return (f"{exc}; an administrator must check the node and accept the new key "
                f"before it can be deployed to")
    if isinstance(exc, ConnectorError):
        return f"{type(exc).__name__}: {exc}"
    return str(exc) or type(exc).__name__


def _set(deployment_id: int, **values: Any) -> None:
    """Progress for the UI and API, in its own short transaction."""
    with db.engine.begin() as conn:
        conn.execute(update(Deployment).where(Deployment.id == deployment_id).values(**values))


def deploy_node(app: Flask, deployment_id: int) -> DeploymentStatus:
    """Carry out one node's deployment end to end; never raises."""
    with app.app_context():
        try:
            return _deploy_node(app, deployment_id)
        except Exception as exc:  # a bug must not leave the row "running"
            logger.exception("deployment %s failed unexpectedly", deployment_id)
            try:
                _set(deployment_id, status=DeploymentStatus.FAILED, error=_describe(exc),
                     finished_at=utcnow())
            except Exception:  # the rollout's conclusion marks it then
                logger.exception("could not record the failure of deployment %s",
                                 deployment_id)
            return DeploymentStatus.FAILED
        finally:
            db.session.remove()


def _deploy_node(app: Flask, deployment_id: int) -> DeploymentStatus:
    cfg = app.config
    deployment = db.session.get(Deployment, deployment_id)
    assert deployment is not None
    rollout = deployment.rollout
    node_id = deployment.node_id
    node = db.session.get(Node, node_id) if node_id else None
    # A thread holds at most one database connection at a time: the session gives
    # its own back before the lease and progress writes take one.
    db.session.rollback()
    if node is None or node_id is None:
        _set(deployment_id, status=DeploymentStatus.FAILED, error="the node was deleted",
             finished_at=utcnow())
        return DeploymentStatus.FAILED
    steps: list[dict[str, Any]] = []
    _set(deployment_id, status=DeploymentStatus.RUNNING, step="lock", started_at=utcnow())
    started = time.monotonic()
    try:
        with node_lease(node_id, ttl=cfg["DEPLOY_LOCK_TTL"], wait=cfg["DEPLOY_LOCK_WAIT"]) as lease:
            steps.append({"step": "lock", "seconds": round(time.monotonic() - started, 4),
                          "ok": True})
            render_started = time.monotonic()
            if rollout.kind == RolloutKind.ROLLBACK:
                target_version = db.session.get(ConfigVersion, rollout.target_version_id)
                if target_version is None:
                    raise NotFound("the version to roll back to no longer exists")
                files = version_files(target_version)
                site_versions = dict(target_version.site_versions)
                domains = _domains(site_versions)
            else:
                files, site_versions, domains = render_node(node)
            previous = current_version(node.id)
            version = _record_version(node, files, site_versions, rollout.triggered_by_id)
            steps.append({"step": "render", "ok": True,
                          "seconds": round(time.monotonic() - render_started, 4)})
            changed = _changed_hosts(previous, site_versions, domains, rollout.site_id)
            job = NodeJob(
                target=ssh_target(node), config_dir=node.config_dir,
                files={path: text.encode() for path, text in files.items()},
                release_name=f"{RELEASE_PREFIX}{version.version}-{secrets.token_hex(4)}",
                test_command=shlex.split(node.test_command),
                reload_command=shlex.split(node.reload_command),
                verify_address=node.listen_address or node.host, verify_port=node.http_port,
                verify_hosts=changed[:cfg["DEPLOY_VERIFY_MAX_SITES"]],
                probe=expected_probe(node, files),
                command_timeout=cfg["SSH_OPERATION_TIMEOUT"],
                verify_timeout=cfg["DEPLOY_VERIFY_TIMEOUT"], steps=steps,
                on_step=lambda step: _progress(lease, deployment_id, step),
            )
            version_id = version.id
            # Commit before any other connection writes (SQLite has one writer at a
            # time); the session then holds no connection while the node is worked on.
            db.session.commit()
            _set(deployment_id, config_version_id=version_id)
            _Remote(connector(app), job).run()
    except StepFailed as failure:
        status = (DeploymentStatus.ROLLED_BACK if failure.step == "verify"
                  else DeploymentStatus.FAILED)
        note = "" if failure.restored else (
            " The previous configuration could not be put back: the node is flagged for a "
            "drift check.")
        _finish(deployment_id, node_id, status, f"{failure.step}: {failure.message}{note}",
                steps, drifted=not failure.restored)
        return status
    except HostKeyChanged as exc:
        with db.engine.begin() as conn:
            conn.execute(update(Node).where(Node.id == node_id).values(
                pending_host_key=exc.presented_key))
        _finish(deployment_id, node_id, DeploymentStatus.FAILED, _describe(exc), steps)
        return DeploymentStatus.FAILED
    except Exception as exc:
        db.session.rollback()
        _finish(deployment_id, node_id, DeploymentStatus.FAILED, _describe(exc), steps)
        return DeploymentStatus.FAILED
    _finish(deployment_id, node_id, DeploymentStatus.SUCCEEDED, "", steps)
    return DeploymentStatus.SUCCEEDED


def _progress(lease: NodeLease, deployment_id: int, step: str) -> None:
    """Each step shows where the deployment is, and renews the node's lease once a
    third of it has passed, in one short transaction."""
    with db.engine.begin() as conn:
        lease.renew(conn, only_if_older_than=lease.ttl / 3)
        conn.execute(update(Deployment).where(Deployment.id == deployment_id)
                     .values(step=step))


def _finish(deployment_id: int, node_id: int, status: DeploymentStatus, error: str,
            steps: list[dict[str, Any]], *, drifted: bool = False) -> None:
    _set(deployment_id, status=status, error=error[:4000], steps=steps, step="",
         finished_at=utcnow())
    values: dict[str, Any] = {}
    if status == DeploymentStatus.SUCCEEDED:
        values = {"last_seen": utcnow(), "drifted": False, "drift_details": "",
                  "status": NodeStatus.ONLINE}
    elif drifted:
        values = {"drifted": True, "drift_details": error[:2000]}
    if values:
        with db.engine.begin() as conn:
            conn.execute(update(Node).where(Node.id == node_id,
                                            Node.status != NodeStatus.DRAINING).values(**values))


def _domains(site_versions: dict[str, int]) -> list[str]:
    ids = [int(i) for i in site_versions]
    return list(db.session.scalars(select(Site.domain).where(Site.id.in_(ids))
                                   .order_by(Site.domain))) if ids else []


def _changed_hosts(previous: ConfigVersion | None, site_versions: dict[str, int],
                   domains: list[str], focus_site_id: int | None) -> list[str]:
    """Domains whose configuration this deployment changes (the rollout's own site
    first): those are the ones to verify."""
    before = previous.site_versions if previous is not None else {}
    changed_ids = {int(i) for i, v in site_versions.items() if before.get(i) != v}
    if focus_site_id is not None and str(focus_site_id) in site_versions:
        changed_ids.add(focus_site_id)
    if not changed_ids:
        return []
    rows = db.session.execute(select(Site.id, Site.domain).where(Site.id.in_(changed_ids)))
    by_id = {site_id: domain for site_id, domain in rows}
    ordered = sorted(changed_ids, key=lambda i: (i != focus_site_id, by_id.get(i, "")))
    return [by_id[i] for i in ordered if i in by_id and by_id[i] in domains]


def _record_version(node: Node, files: dict[str, str], site_versions: dict[str, int],
                    actor_id: int | None) -> ConfigVersion:
    """Numbered per node; the node's lease makes max()+1 safe."""
    number = (db.session.scalar(select(func.max(ConfigVersion.version))
                                .where(ConfigVersion.node_id == node.id)) or 0) + 1
    version = ConfigVersion(node_id=node.id, version=number, files=json.dumps(files),
                            sha256=files_digest(files), site_versions=site_versions,
                            file_count=len(files), created_by_id=actor_id)
    db.session.add(version)
    db.session.flush()
    return version


# --------------------------------------------------------------------------- #
# Rollouts                                                                    #
# --------------------------------------------------------------------------- #

def active_nodes(pool_id: int) -> list[Node]:
    """Nodes that receive deployments: enabled and not draining."""
    stmt = (select(Node).where(Node.pool_id == pool_id, Node.enabled.is_(True),
                               Node.status != NodeStatus.DRAINING).order_by(Node.name))
    return list(db.session.scalars(stmt))


def _create_rollout(actor: User, nodes: list[Node], *, kind: RolloutKind,
                    site: Site | None = None, pool_id: int | None = None,
                    canary_node_id: int | None = None,
                    target_version_id: int | None = None) -> Rollout:
    if not nodes:
        raise Conflict("no enabled node to deploy to in this pool")
    rollout = Rollout(kind=kind, site_id=site.id if site else None,
                      owner_id=site.owner_id if site else None,
                      pool_id=pool_id if pool_id is not None else (site.pool_id if site else None),
                      canary_node_id=canary_node_id, target_version_id=target_version_id,
                      triggered_by_id=actor.id)
    rollout.deployments = [
        Deployment(site_id=site.id if site else None, node_id=node.id, node_name=node.name,
                   triggered_by_id=actor.id)
        for node in nodes
    ]
    db.session.add(rollout)
    db.session.flush()
    return rollout


def deploy_site(actor: User, site_id: int, *, canary_node: str | None = None) -> Rollout:
    """Start deploying the site's pool (every active node); returns at once.

    :param canary_node: name of an active node of the pool to deploy first.
    """
    site: Site = get_scoped(Site, site_id, actor, "site")
    targets = active_nodes(site.pool_id)
    canary_id = None
    if canary_node:
        canary_id = next((n.id for n in targets if n.name == canary_node), None)
        if canary_id is None:
            raise ValidationError("invalid canary", {
                "canary_node": "must be the name of an active node of the site's pool"})
    rollout = _create_rollout(actor, targets, kind=RolloutKind.DEPLOY, site=site,
                              canary_node_id=canary_id)
    audit.record(actor, "site.deploy", "site", site.id,
                 {"rollout": rollout.id, "nodes": len(rollout.deployments)})
    db.session.commit()
    launch(rollout.id)
    return rollout


def deploy_nodes(actor: User, node_ids: list[int]) -> Rollout:
    """Deploy the current state of their pools to these nodes (admin)."""
    require_admin(actor)
    nodes = [get_or_404(Node, node_id, "node") for node_id in node_ids]
    rollout = _create_rollout(actor, nodes, kind=RolloutKind.DEPLOY,
                              pool_id=nodes[0].pool_id if nodes else None)
    audit.record(actor, "node.deploy", "node", node_ids[0] if node_ids else None,
                 {"rollout": rollout.id, "nodes": node_ids})
    db.session.commit()
    launch(rollout.id)
    return rollout


def rollback_node(actor: User, node_id: int, version_id: int) -> Rollout:
    """Re-deploy an earlier version of one node, exactly as it was (admin)."""
    node = get_or_404(Node, node_id, "node")
    version = get_version(actor, node_id, version_id)
    rollout = _create_rollout(actor, [node], kind=RolloutKind.ROLLBACK, pool_id=node.pool_id,
                              target_version_id=version.id)
    audit.record(actor, "node.rollback", "node", node.id,
                 {"rollout": rollout.id, "version": version.version})
    db.session.commit()
    launch(rollout.id)
    return rollout


def launch(rollout_id: int) -> None:
    """Run the rollout in the background (the request answers 202 at once)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    thread = threading.Thread(target=run_rollout, args=(app, rollout_id),
                              name=f"rollout-{rollout_id}", daemon=True)
    thread.start()
    _THREADS[rollout_id] = thread


_THREADS: dict[int, threading.Thread] = {}


def run_rollout(app: Flask, rollout_id: int) -> None:
    """Canary first when asked, then every other node in parallel (bounded)."""
    with app.app_context():
        try:
            _run_rollout(app, rollout_id)
        except Exception as exc:
            logger.exception("rollout %s failed", rollout_id)
            with db.engine.begin() as conn:
                conn.execute(update(Rollout).where(Rollout.id == rollout_id).values(
                    status=DeploymentStatus.FAILED, error=_describe(exc), finished_at=utcnow()))
                conn.execute(update(Deployment).where(
                    Deployment.rollout_id == rollout_id,
                    Deployment.status.in_([DeploymentStatus.PENDING, DeploymentStatus.RUNNING]))
                    .values(status=DeploymentStatus.FAILED, finished_at=utcnow(),
                            error="interrupted: " + _describe(exc)))
        finally:
            db.session.remove()
            _THREADS.pop(rollout_id, None)


def _run_rollout(app: Flask, rollout_id: int) -> None:
    rollout = db.session.get(Rollout, rollout_id)
    assert rollout is not None
    rollout.status = DeploymentStatus.RUNNING
    rollout.started_at = utcnow()
    db.session.commit()
    pending = [(d.id, d.node_id) for d in rollout.deployments]
    canary = [d for d in pending if d[1] == rollout.canary_node_id]
    rest = [d for d in pending if d[1] != rollout.canary_node_id]
    db.session.remove()
    error = ""
    if canary:
        status = deploy_node(app, canary[0][0])
        if status != DeploymentStatus.SUCCEEDED:
            error = "the canary node failed: the rollout stopped before the other nodes"
            for deployment_id, _ in rest:
                _set(deployment_id, status=DeploymentStatus.SKIPPED, finished_at=utcnow(),
                     error="not attempted: the canary node failed")
            rest = []
    if rest:
        workers = max(1, min(app.config["DEPLOY_PARALLELISM"], len(rest)))
        with ThreadPoolExecutor(max_workers=workers,
                                thread_name_prefix=f"rollout-{rollout_id}") as executor:
            list(executor.map(lambda d: deploy_node(app, d[0]), rest))
    _conclude(rollout_id, error)


def _conclude(rollout_id: int, error: str) -> None:
    rollout = db.session.get(Rollout, rollout_id)
    assert rollout is not None
    db.session.refresh(rollout)
    statuses = [d.status for d in rollout.deployments]
    failed = [d for d in rollout.deployments if d.status != DeploymentStatus.SUCCEEDED]
    if not failed:
        rollout.status = DeploymentStatus.SUCCEEDED
    else:
        rollout.status = DeploymentStatus.FAILED
        summary = f"{len(failed)} of {len(statuses)} nodes failed: " + "; ".join(
            f"{d.node_name}: {d.error}" for d in failed if d.status != DeploymentStatus.SKIPPED)
        rollout.error = (f"{error}. {summary}" if error else summary)[:4000]
    rollout.finished_at = utcnow()
    db.session.commit()
    if rollout.pool_id is not None:
        refresh_site_status(rollout.pool_id)


def refresh_site_status(pool_id: int) -> None:
    """"Deployed on X of Y nodes" for every site of the pool, from what each active
    node last took successfully, and the last error a node reported."""
    nodes = active_nodes(pool_id)
    carried: list[dict[str, int]] = []
    errors: dict[int, str] = {}
    for node in nodes:
        version = current_version(node.id)
        carried.append(dict(version.site_versions) if version is not None else {})
        last = db.session.scalar(select(Deployment).where(
            Deployment.node_id == node.id,
            Deployment.status.in_([DeploymentStatus.SUCCEEDED, DeploymentStatus.FAILED,
                                   DeploymentStatus.ROLLED_BACK]))
            .order_by(Deployment.id.desc()).limit(1))
        if last is not None and last.status != DeploymentStatus.SUCCEEDED:
            errors[node.id] = f"{node.name}: {last.error}"
    now = utcnow()
    for site in db.session.scalars(select(Site).where(Site.pool_id == pool_id)):
        deployed = sum(1 for versions in carried
                       if versions.get(str(site.id)) == site.config_version)
        site.deployed_nodes, site.target_nodes = deployed, len(nodes)
        site.last_deploy_error = "; ".join(errors.values())[:4000]
        if deployed and deployed == len(nodes):
            site.status, site.last_deployed_at = SiteStatus.DEPLOYED, now
        elif deployed:
            site.status, site.last_deployed_at = SiteStatus.PARTIAL, now
        elif errors:
            site.status = SiteStatus.FAILED
    db.session.commit()


def wait(rollout_id: int, timeout: float = 300.0) -> Rollout:
    """Block until a rollout finishes (CLI, tests); the rollout runs regardless."""
    deadline = time.monotonic() + timeout
    while True:
        thread = _THREADS.get(rollout_id)
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
        db.session.expire_all()
        rollout = db.session.get(Rollout, rollout_id)
        if rollout is None:
            raise NotFound("deployment not found")
        if rollout.status.finished or time.monotonic() >= deadline:
            return rollout
        time.sleep(0.1)


# --------------------------------------------------------------------------- #
# Reading                                                                     #
# --------------------------------------------------------------------------- #

def get_rollout(actor: User, rollout_id: int) -> Rollout:
    rollout = db.session.scalar(scoped(select(Rollout).where(Rollout.id == rollout_id), actor,
                                       Rollout))
    if rollout is None:
        raise NotFound("deployment not found")
    return rollout


def redactor(actor: User, pool_id: int | None) -> Callable[[str], str]:
    """What a node printed can name other tenants' sites (a failed test quotes the
    file and upstream it stopped at): for a client, those names become
    "[another site]"; administrators see everything."""
    if actor.is_admin or pool_id is None:
        return lambda text: text
    stmt = (select(Site).where(Site.pool_id == pool_id)
            .options(selectinload(Site.hostnames), selectinload(Site.backends)))
    theirs: set[str] = set()
    mine: set[str] = set()
    for site in db.session.scalars(stmt):
        names = {site.domain, *site.aliases, *(b.host for b in site.backends)}
        (mine if site.owner_id == actor.id else theirs).update(names)
    hidden = sorted(theirs - mine, key=len, reverse=True)

    def redact(text: str) -> str:
        for name in hidden:
            text = text.replace(name, "[another site]")
        return text

    return redact


def rollout_to_dict(rollout: Rollout, actor: User) -> dict[str, Any]:
    redact = redactor(actor, rollout.pool_id)
    return {
        "id": rollout.id,
        "kind": rollout.kind.value,
        "site_id": rollout.site_id,
        "status": rollout.status.value,
        "error": redact(rollout.error),
        "created_at": rollout.created_at,
        "started_at": rollout.started_at,
        "finished_at": rollout.finished_at,
        "nodes": [{
            "node": d.node_name,
            "node_id": d.node_id,
            "status": d.status.value,
            "step": d.step,
            "error": redact(d.error),
            "steps": d.steps,
            "version": d.config_version.version if d.config_version else None,
        } for d in rollout.deployments],
    }


def list_rollouts(actor: User, *, site_id: int | None = None, page: int = 1,
                  per_page: int = 50) -> Page[Rollout]:
    stmt = scoped(select(Rollout), actor, Rollout).options(
        selectinload(Rollout.deployments).selectinload(Deployment.config_version))
    if site_id is not None:
        get_scoped(Site, site_id, actor, "site")
        stmt = stmt.where(Rollout.site_id == site_id)
    return paginate(stmt.order_by(Rollout.id.desc()), page, per_page)


def list_versions(actor: User, node_id: int, *, page: int = 1,
                  per_page: int = 50) -> Page[ConfigVersion]:
    require_admin(actor)
    get_or_404(Node, node_id, "node")
    stmt = select(ConfigVersion).where(ConfigVersion.node_id == node_id)
    return paginate(stmt.order_by(ConfigVersion.version.desc()), page, per_page)


def get_version(actor: User, node_id: int, version_id: int) -> ConfigVersion:
    require_admin(actor)
    version = db.session.get(ConfigVersion, version_id)
    if version is None or version.node_id != node_id:
        raise NotFound("version not found")
    return version


def version_statuses(version_ids: list[int]) -> dict[int, str]:
    """The outcome of each version's deployment, for the history page."""
    rows = db.session.execute(select(Deployment.config_version_id, Deployment.status)
                              .where(Deployment.config_version_id.in_(version_ids)))
    return {vid: status.value for vid, status in rows if vid is not None}


def masked(files: dict[str, str]) -> dict[str, str]:
    return {path: (MASKED_KEY if PRIVATE_KEY_MARK in text else text)
            for path, text in files.items()}


def diff_versions(actor: User, node_id: int, old_id: int, new_id: int) -> str:
    """A unified diff of two versions of one node (private keys withheld)."""
    require_admin(actor)
    versions = [get_version(actor, node_id, version_id) for version_id in (old_id, new_id)]
    old, new = (masked(version_files(v)) for v in versions)
    chunks: list[str] = []
    for path in sorted(set(old) | set(new)):
        chunks.extend(difflib.unified_diff(
            old.get(path, "").splitlines(keepends=True),
            new.get(path, "").splitlines(keepends=True),
            fromfile=f"v{versions[0].version}/{path}", tofile=f"v{versions[1].version}/{path}"))
    return "".join(chunks)


# --------------------------------------------------------------------------- #
# Drift                                                                       #
# --------------------------------------------------------------------------- #

def check_drift(actor: User | None, node_id: int) -> Node:
    """Compare the files on the node with its last deployed version and flag it."""
    if actor is not None:
        require_admin(actor)
    node = get_or_404(Node, node_id, "node")
    version = current_version(node.id)
    pool = connector()
    expected = version_files(version) if version is not None else {}
    try:
        actual = pool.read_tree(ssh_target(node), node.config_dir)
    except ConnectorError as exc:
        node.drift_details = f"could not read the node: {_describe(exc)}"
        node.drift_checked_at = utcnow()
        db.session.commit()
        return node
    differences = []
    for path in sorted(set(expected) | set(actual)):
        if path not in actual:
            differences.append(f"missing {path}")
        elif path not in expected:
            differences.append(f"unexpected {path}")
        elif actual[path] != expected[path].encode():
            differences.append(f"changed {path}")
    node.drifted = bool(differences)
    node.drift_details = "; ".join(differences)[:2000]
    node.drift_checked_at = utcnow()
    if differences:
        audit.record(actor, "node.drift", "node", node.id, {"differences": differences[:20]})
    db.session.commit()
    return node
