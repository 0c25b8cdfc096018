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

A fleet costs the database a handful of statements, not a dozen per node: a rollout
leases every free node in one transaction, reads the pool's sites once, renders each
node, records every version in one transaction, and writes progress, outcomes and
lease renewals in batches (:class:`Recorder`).  On the node, the test and the reload
run in one session and verification waits only as long as the old workers do.
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import json
import logging
import secrets
import shlex
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from select import POLLHUP, POLLIN, poll
from typing import Any

from flask import Flask, current_app
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.orm import selectinload

from app.connector import (
    CommandResult,
    ConnectorError,
    HostKeyChanged,
    SSHPool,
    SSHTarget,
)
from app.errors import Conflict, NotFound, ValidationError
from app.executor import executor
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
from app.proxy.base import PROBE_HOST, PROBE_PATH, NodeSpec, SiteSpec
from app.services import audit, explain, rendering, set_aside
from app.services import backends as backends_service
from app.services.common import Page, get_or_404, get_scoped, paginate, require_admin, scoped
from app.services.node_lock import NodeLeases

logger = logging.getLogger(__name__)

RELEASE_PREFIX = "v"
ADOPTED_PREFIX = "adopted-"
PRIVATE_KEY_MARK = "PRIVATE KEY-----"
MASKED_KEY = "# private key withheld\n"
# After a reload: how long the old generation may still answer (nginx's master lets
# it accept for 100 ms after starting the new one), unless it is seen to retire
# sooner, then a moment for the other old workers told at the same instant, then how
# many fresh connections in a row must see the new configuration.
PROBE_SETTLE_SECONDS = 0.15
PROBE_GRACE_SECONDS = 0.01
PROBE_CONFIRMATIONS = 3
PROBE_INTERVAL_SECONDS = 0.01
# The note on a node's deployment that took the pool without its rollout's own site.
SET_ASIDE_STEP = "set aside"
# How long a site answering 5xx is asked again before that is taken as its answer.
SITE_ERROR_RECHECK_SECONDS = 0.5
# How often a rollout writes its nodes' progress (one transaction for all of them).
PROGRESS_INTERVAL = 0.1


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


@dataclass(frozen=True)
class PoolState:
    """A pool's sites as the engines take them, read once for every node of a
    rollout's batch (each node still gets its own rendering).

    ``accepted`` holds, per site, the settings of the last version the nodes took
    (JSON) and its number: what a node renders for a site that is set aside.
    ``refused`` names the sites whose current version a node refused: other
    tenants' rollouts set them aside from the start."""

    specs: list[SiteSpec]
    versions: dict[str, int]
    domains: dict[int, str]
    accepted: dict[int, tuple[dict[str, Any] | None, int | None]]
    refused: frozenset[int]

    @classmethod
    def load(cls, pool_id: int) -> PoolState:
        sites = pool_sites(pool_id)
        return cls(specs=[rendering.site_spec(site) for site in sites],
                   versions={str(site.id): site.config_version for site in sites},
                   domains={site.id: site.domain for site in sites},
                   accepted={site.id: (site.accepted_spec, site.accepted_version)
                             for site in sites},
                   refused=frozenset(site.id for site in sites
                                     if site.refused_version == site.config_version))

    def with_aside(self, aside: Collection[int]) -> tuple[list[SiteSpec], dict[str, int]]:
        """The specs and versions with the sites in ``aside`` at their accepted
        version, or left out when they have none."""
        if not aside:
            return self.specs, self.versions
        specs, versions = [], dict(self.versions)
        for spec in self.specs:
            if spec.id not in aside:
                specs.append(spec)
                continue
            data, version = self.accepted.get(spec.id, (None, None))
            if data is None or version is None:
                versions.pop(str(spec.id), None)
                continue
            specs.append(set_aside.spec_from_json(data, spec.certificate))
            versions[str(spec.id)] = version
        return specs, versions


@dataclass(frozen=True)
class NodeRender:
    """One node's files, the site versions they carry, and which files are whose."""

    files: dict[str, str]
    versions: dict[str, int]
    site_files: dict[int, list[str]]


def render_node(node: NodeSpec, engine_name: str, state: PoolState,
                aside: Collection[int] = ()) -> NodeRender:
    """The node's files, with the engine's probe."""
    engine = get_engine(engine_name)
    specs, versions = state.with_aside(aside)
    rendered = engine.render(node, specs)
    files = rendered.files
    files.update(engine.probe(node, probe_token(files)))
    return NodeRender(files, versions, rendered.site_files)


def probe_token(files: dict[str, str]) -> str:
    """What the probe answers: a digest of the configuration it ships with, so that
    the same configuration always carries the same token (and a rollback's files
    still name theirs)."""
    return files_digest(files)[:32]


def expected_probe(node: Node, files: dict[str, str]) -> str | None:
    """The token a node answers once it runs ``files``; None for engines without a
    probe (their reload returns when the configuration is live)."""
    return _expected_probe(rendering.node_spec(node), node.proxy_type.value, files)


def _expected_probe(spec: NodeSpec, engine_name: str, files: dict[str, str]) -> str | None:
    engine = get_engine(engine_name)
    names = set(engine.probe(spec, "-"))
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


def rollback_summary(current: ConfigVersion | None, target: ConfigVersion) -> str:
    """What rolling back from ``current`` to ``target`` does to the node's sites, in
    words for the confirmation (from the versions' site map: no file is decrypted)."""
    if current is None:
        return f"The node gets v{target.version} ({target.file_count} files)."
    now, then = current.site_versions or {}, target.site_versions or {}
    removed = len(set(now) - set(then))
    added = len(set(then) - set(now))
    changed = sum(1 for site, version in then.items() if site in now and now[site] != version)
    parts = [f"1 site {one}" if count == 1 else f"{count} sites {many}"
             for count, one, many in (
                 (changed, "goes back to an earlier configuration",
                  "go back to an earlier configuration"),
                 (removed, "stops being served", "stop being served"),
                 (added, "comes back", "come back")) if count]
    return (f"From v{current.version} to v{target.version}: "
            + ("; ".join(parts) if parts else "no site changes (shared files only)") + ".")


def _latest_deployments(node_ids: list[int], statuses: list[DeploymentStatus], *,
                        by_id: bool = False) -> Any:
    """The latest deployment of each node (by finish, or by creation) among those
    with these statuses, ranked 1 in a subquery: one query for a whole pool."""
    order = ((Deployment.id.desc(),) if by_id
             else (Deployment.finished_at.desc(), Deployment.id.desc()))
    rank = func.row_number().over(partition_by=Deployment.node_id, order_by=order)
    return (select(Deployment.node_id, Deployment.status, Deployment.error,
                   Deployment.config_version_id, rank.label("rank"))
            .where(Deployment.node_id.in_(node_ids), Deployment.status.in_(statuses))
            .subquery())


def carried_versions(node_ids: list[int]) -> dict[int, dict[str, int]]:
    """Per node, the site versions of what it last took successfully."""
    return {node_id: versions for node_id, (versions, _) in
            _last_taken(node_ids, with_files=False).items()}


def _last_taken(node_ids: list[int], *, with_files: bool
                ) -> dict[int, tuple[dict[str, int], dict[str, str] | None]]:
    """Per node, what it last took successfully: site versions, and files if asked."""
    if not node_ids:
        return {}
    latest = _latest_deployments(node_ids, [DeploymentStatus.SUCCEEDED])
    columns = [latest.c.node_id, ConfigVersion.site_versions]
    if with_files:
        columns.append(ConfigVersion.files)
    rows = db.session.execute(
        select(*columns).join(ConfigVersion, ConfigVersion.id == latest.c.config_version_id)
        .where(latest.c.rank == 1))
    return {row[0]: (dict(row[1] or {}), json.loads(row[2]) if with_files else None)
            for row in rows}


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
    # (site id, domain) of the sites this deployment changes: the ones to ask for.
    verify_hosts: list[tuple[int, str]]
    probe: str | None
    # What the probe answers while the last deployed version runs (None if unknown).
    previous_probe: str | None
    command_timeout: float
    verify_timeout: float
    steps: list[dict[str, Any]] = field(default_factory=list)
    on_step: Callable[[str], None] = lambda step: None
    # Per verified site: "" when the proxy answered it well, else a warning for its
    # owner (its backend answered 5xx, say).
    site_warnings: dict[int, str] = field(default_factory=dict)


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
        self.old_generation: OldGeneration | None = None

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
        except HostKeyChanged as exc:
            if not self.swapped:
                raise  # nothing was sent; the caller records the key to accept
            # Reconnecting to put the previous release back meets the same key, but
            # try; whether it worked decides whether the node is flagged.
            restored = self.restore(reload=self.reloaded)
            raise StepFailed(self.current, _describe(exc), restored=restored,
                             after_swap=True) from exc
        except Exception as exc:
            restored = self.restore(reload=self.reloaded) if self.swapped else True
            raise StepFailed(self.current, _describe(exc), restored=restored,
                             after_swap=self.swapped) from exc
        finally:
            if self.old_generation is not None:
                self.old_generation.close()
        # The new release is live and verified: a failure from here on is no reason to
        # roll back (the next deployment's sweep removes what is left).
        try:
            with self.step("cleanup"):
                if self.previous and not self.adopted and self._ours(self.previous):
                    self.pool.remove_tree(self.job.target, self._absolute(self.previous))
        except Exception:
            logger.warning("node %s: could not remove the previous release",
                           self.job.target.node_id, exc_info=True)

    def test_only(self) -> tuple[bool, str]:
        """Stage the release, run the node's test command on it and put the previous
        release back without a reload: what the node thinks of a candidate
        configuration, while the proxy keeps running the live one.  Returns whether
        the test passed, and what it printed.

        :raises StepFailed: when the stage or the restore fails."""
        try:
            self._stage()
            result = self.pool.run(self.job.target, self.job.test_command,
                                   timeout=self.job.command_timeout)
        except StepFailed:
            raise
        except Exception as exc:
            restored = self.restore(reload=False) if self.swapped else True
            raise StepFailed(self.current, _describe(exc), restored=restored,
                             after_swap=self.swapped) from exc
        if not self.restore(reload=False):
            raise StepFailed("test", "could not put the previous release back after a test",
                             restored=False, after_swap=True)
        return result.ok, _output(result)

    def _steps(self) -> None:
        job = self.job
        self._stage()
        self._test_and_reload()
        with self.step("verify"):
            problem = wait_for_probe(job.verify_address, job.verify_port, job.probe,
                                     job.verify_timeout, self.old_generation)
            if not problem:
                problem, job.site_warnings = verify_sites(
                    job.verify_address, job.verify_port, job.verify_hosts, job.verify_timeout)
            if problem:
                self._fail("verify", problem, reload=True)

    def _stage(self) -> None:
        """Upload the release and swap the link to it (the operator's directory kept
        aside on our first deployment)."""
        pool, target, job = self.pool, self.job.target, self.job
        with self.step("upload"):
            # Usually a link already (one request); otherwise, what it is.
            self.previous = pool.readlink(target, self.config_dir)
            kind = "link" if self.previous is not None else pool.kind(target, self.config_dir)
            if kind == "file":
                raise StepFailed("upload", f"{self.config_dir} is a file, not a directory",
                                 restored=True, after_swap=False)
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

    def _test_and_reload(self) -> None:
        """The test command, then the reload only if it passed, in one remote session
        (one shell on the node instead of two); each step timed on its own."""
        pool, target, job = self.pool, self.job.target, self.job
        if job.probe is not None:
            # A connection the running workers hold, to see them retire.
            self.old_generation = OldGeneration.attach(job.verify_address, job.verify_port,
                                                       min(job.verify_timeout, 2.0),
                                                       job.previous_probe)
        self.current = "test"
        job.on_step("test")
        started = time.monotonic()
        reload_started: list[float] = []
        lost: list[Exception] = []

        def reloading(_index: int) -> None:
            reload_started.append(time.monotonic())
            self.current = "reload"
            try:
                job.on_step("reload")
            except Exception as exc:  # raised once the session is over
                lost.append(exc)

        def record(results: list[CommandResult]) -> None:
            now = time.monotonic()
            middle = reload_started[0] if reload_started else now
            job.steps.append({"step": "test", "seconds": round(middle - started, 4),
                              "ok": bool(results) and results[0].ok})
            if reload_started:
                job.steps.append({"step": "reload", "seconds": round(now - middle, 4),
                                  "ok": len(results) > 1 and results[1].ok})

        self.reloaded = True  # the reload may start before we hear that the test passed
        try:
            results = pool.run_chain(target, [job.test_command, job.reload_command],
                                     timeout=job.command_timeout, on_next=reloading)
        except Exception:
            record([])
            raise
        record(results)
        if lost:
            raise lost[0]
        if not results[0].ok:
            self._fail("test", f"the node's test command refused the configuration: "
                               f"{_output(results[0])}", reload=False)
        if not results[1].ok:
            self._fail("reload", f"reload failed: {_output(results[1])}", reload=True,
                       reload_refused=True)

    def _absolute(self, link: str) -> str:
        return link if link.startswith("/") else f"{self.config_dir.rsplit('/', 1)[0]}/{link}"

    def _ours(self, path: str) -> bool:
        return self._absolute(path).startswith(f"{self.releases}/{RELEASE_PREFIX}")

    def _sweep(self, kind: str | None) -> None:
        """Remove releases left by interrupted deployments (never the live one, never
        an adopted operator directory)."""
        live = self._absolute(self.previous) if kind == "link" and self.previous else None
        for name in self.pool.listdir(self.job.target, self.releases):
            path = f"{self.releases}/{name}"
            if name.startswith(RELEASE_PREFIX) and path != live:
                self.pool.remove_tree(self.job.target, path)

    def _fail(self, step: str, message: str, *, reload: bool,
              reload_refused: bool = False) -> None:
        restored = self.restore(reload=reload, reload_refused=reload_refused)
        raise StepFailed(step, message, restored=restored, after_swap=True)

    def restore(self, *, reload: bool, reload_refused: bool = False) -> bool:
        """Put the previous release back (and reload it when the new one may have been
        loaded).  Returns whether that worked: a reload that fails here means the proxy
        may still run the new release, unless the node refused the deployment's own
        reload too (``reload_refused``: it never left the previous one).

        Removing the failed release is only tidying up: when that fails (a stall, a
        dropped connection), the release stays for the next deployment's sweep and the
        previous release is still reloaded, or the proxy would keep running the one
        that failed."""
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
        except Exception:
            logger.exception("node %s: could not put the previous release back",
                             target.node_id)
            return False
        try:
            pool.remove_tree(target, self.release)
        except Exception:
            logger.warning("node %s: could not remove the failed release %s; the next "
                           "deployment's sweep does", target.node_id, self.release,
                           exc_info=True)
        if not reload:
            return True
        try:
            result = pool.run(target, self.job.reload_command,
                              timeout=self.job.command_timeout)
        except Exception:
            logger.exception("node %s: could not reload the previous release", target.node_id)
            return False
        if not result.ok and not reload_refused:
            logger.error("node %s: reloading the previous release failed: %s",
                         target.node_id, _output(result))
            return False
        return True


class OldGeneration:
    """An idle keep-alive connection to the node's HTTP port, opened before the
    reload: the workers running the previous configuration hold it.

    On a reload, nginx's master starts the new workers, lets the old ones accept for
    another 100 ms, then tells them all at once to shut down gracefully; each first
    closes its listening sockets, then its idle connections.  This connection closing
    therefore says that the previous generation no longer accepts.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    def attach(cls, address: str, port: int, timeout: float,
               token: str | None) -> OldGeneration | None:
        """A connection held by workers that answer ``token``: those of the version
        this deployment replaces, not of an earlier one still retiring.  None if
        that cannot be had (then verification waits a fixed time instead)."""
        if token is None:
            return None
        conn = http.client.HTTPConnection(address, port, timeout=timeout)
        try:
            conn.request("GET", PROBE_PATH, headers={"Host": PROBE_HOST,
                                                     "User-Agent": "rpcc-verify/1"})
            response = conn.getresponse()
            body = response.read(65536).decode(errors="replace")
            if response.status != 200 or body.strip() != token or response.will_close \
                    or not response.isclosed() or conn.sock is None:
                conn.close()
                return None
            sock, conn.sock = conn.sock, None  # ours now; the HTTPConnection forgets it
            return cls(sock)
        except (OSError, http.client.HTTPException):
            conn.close()
            return None

    def wait_retired(self, seconds: float) -> bool:
        """Whether the server closed the connection within ``seconds``."""
        poller = poll()
        poller.register(self.sock, POLLIN | POLLHUP)
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                return False
            try:
                if not self.sock.recv(4096, socket.MSG_DONTWAIT):
                    return True
            except BlockingIOError:
                continue
            except OSError:
                return True  # reset: closed as well

    def close(self) -> None:
        self.sock.close()


def wait_for_probe(address: str, port: int, token: str | None, timeout: float,
                   old: OldGeneration | None = None) -> str:
    """Wait until the node answers with the new configuration's token, and until the
    previous generation of workers no longer accepts: right after a reload the old
    workers may still be the ones answering.  Returns the problem."""
    if token is None:
        return ""
    deadline = time.monotonic() + timeout
    seen = ""
    confirmed = 0
    needed = PROBE_CONFIRMATIONS
    while True:
        try:
            status, body = _http_get(address, port, PROBE_HOST, PROBE_PATH,
                                     max(0.5, deadline - time.monotonic()))
            if status == 200 and body.strip() == token:
                if confirmed == 0:
                    # A new worker answered.  Wait for the old ones to stop accepting:
                    # seen directly when they drop our idle connection afterwards (a
                    # connection dropped already went with a generation retiring
                    # before ours started), else (and at most) the time nginx's master
                    # gives them before telling them; then see the new configuration
                    # on fresh connections in a row.
                    if old is None or old.wait_retired(0):
                        time.sleep(PROBE_SETTLE_SECONDS)
                    elif old.wait_retired(PROBE_SETTLE_SECONDS):
                        time.sleep(PROBE_GRACE_SECONDS)
                        needed = 1
                confirmed += 1
                if confirmed > needed:
                    return ""
                continue
            confirmed = 0
            seen = f"it answered HTTP {status} {body[:40]!r}"
        except (OSError, http.client.HTTPException) as exc:
            confirmed = 0
            seen = f"no answer: {exc}"
        if time.monotonic() >= deadline:
            return f"the node did not load the new configuration within {timeout:g} s ({seen})"
        time.sleep(PROBE_INTERVAL_SECONDS)



def verify_sites(address: str, port: int, hosts: list[tuple[int, str]],
                 timeout: float) -> tuple[str, dict[int, str]]:
    """Ask the node for each (site id, host): any HTTP answer proves the proxy serves
    the site with the new configuration.  An answer of 500 or more is the site's own
    business (its backend is down or failing): a warning for its owner, never a
    reason to roll back the other tenants' changes.  Retried within ``timeout``:
    right after a reload an old worker may still be exiting.

    Returns the problem ("" when the proxy answered every site) and, per site, its
    warning ("" for none)."""
    problems = []
    warnings: dict[int, str] = {}
    for site_id, host in hosts:
        deadline = time.monotonic() + timeout
        last = warning = ""
        while True:
            try:
                status = _http_status(address, port, host, max(0.5, deadline - time.monotonic()))
                last = ""
                if status < 500:
                    warning = ""
                    break
                if not warning:  # the probe proved the new workers: a short second look
                    deadline = min(deadline, time.monotonic() + SITE_ERROR_RECHECK_SECONDS)
                warning = (f"After the last deployment the proxy answered HTTP {status} for "
                           f"{host}: is its backend up and answering?")
            except (OSError, http.client.HTTPException) as exc:
                last = f"{host} did not answer: {exc}"
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        if last:
            problems.append(last)
        else:
            warnings[site_id] = warning
    return "; ".join(problems), warnings



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


# --------------------------------------------------------------------------- #
# Recording progress                                                          #
# --------------------------------------------------------------------------- #

class SiteOutcomes:
    """What a rollout's nodes found about single sites, written once it ends: the
    versions a node refused (set aside), and what verification saw."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # site id -> (version, the owner's sentence, what the node printed)
        self.refused: dict[int, tuple[int, str, str]] = {}
        # site id -> warning ("" when every node that asked got a good answer)
        self.warnings: dict[int, str] = {}

    def refuse(self, site_id: int, version: int, reason: str, output: str) -> None:
        with self._lock:
            self.refused.setdefault(site_id, (version, reason, output))

    def verified(self, warnings: dict[int, str]) -> None:
        with self._lock:
            for site_id, warning in warnings.items():
                if warning or site_id not in self.warnings:
                    self.warnings[site_id] = warning


class Recorder:
    """A rollout's writes to the database, batched: the deployments' progress and
    outcome, their nodes' state, and the renewal and release of the rollout's node
    leases, every ``interval`` seconds in one short transaction from one thread.

    Fifty nodes each writing their every step in its own transaction made the
    database's write lock the bottleneck of a rollout.  Batched, progress shows up to
    ``interval`` late; an outcome is written before its node's lease is given back,
    in the same transaction, so whoever takes the node next sees it.
    """

    def __init__(self, app: Flask, leases: NodeLeases, interval: float = PROGRESS_INTERVAL,
                 name: str = "recorder") -> None:
        self.app = app
        self.leases = leases
        self.interval = interval
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._deployments: dict[int, dict[str, Any]] = {}
        self._nodes: dict[int, dict[str, Any]] = {}
        self._release: set[int] = set()
        self.sites = SiteOutcomes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def update(self, deployment_id: int, **values: Any) -> None:
        with self._lock:
            self._deployments.setdefault(deployment_id, {}).update(values)

    def finish(self, deployment_id: int, node_id: int | None, status: DeploymentStatus,
               error: str, steps: list[dict[str, Any]], *, drifted: bool = False) -> None:
        """The deployment's outcome; the node's lease goes back with it."""
        node_values: dict[str, Any] = {}
        if status == DeploymentStatus.SUCCEEDED:
            node_values = {"last_seen": utcnow(), "drifted": False, "drift_details": "",
                           "status": NodeStatus.ONLINE}
        elif drifted:
            node_values = {"drifted": True, "drift_details": error[:2000]}
        with self._lock:
            self._deployments.setdefault(deployment_id, {}).update(
                status=status, error=error[:4000], steps=steps, step="", finished_at=utcnow())
            if node_id is not None:
                if node_values:
                    self._nodes.setdefault(node_id, {}).update(node_values)
                self._release.add(node_id)

    def flush(self) -> None:
        """Write what is pending (and renew the leases when due); on failure it stays
        pending for the next attempt."""
        with self._flushing:
            with self._lock:
                deployments, self._deployments = self._deployments, {}
                nodes, self._nodes = self._nodes, {}
                release, self._release = self._release, set()
            if not (deployments or nodes or release) and not self._renewal_due():
                return
            try:
                with db.engine.begin() as conn:
                    renewed = self.leases.renew(conn, only_if_older_than=self.leases.ttl / 3)
                    _update_many(conn, Deployment, deployments)
                    _update_many(conn, Node, nodes, Node.status != NodeStatus.DRAINING)
                    released = self.leases.release(release, conn) if release else None
                # The leases' own view changes only once the transaction committed.
                renewed()
                if released is not None:
                    released()
            except Exception:
                with self._lock:
                    for key, values in deployments.items():
                        self._deployments[key] = {**values, **self._deployments.get(key, {})}
                    for key, values in nodes.items():
                        self._nodes[key] = {**values, **self._nodes.get(key, {})}
                    self._release |= release
                raise

    def close(self) -> None:
        """Stop the thread, write everything, give back every lease."""
        self._stop.set()
        self._thread.join()
        for attempt in range(3):
            try:
                self.flush()
                break
            except Exception:
                logger.exception("could not record a rollout's progress (attempt %d)",
                                 attempt + 1)
                time.sleep(0.2 * (attempt + 1))
        with self._lock:
            unrecorded = set(self._release)
        try:
            # A lease goes back with its node's outcome; a node whose outcome could
            # not be written keeps it until it expires.
            self.leases.release(self.leases.held - unrecorded)
        except Exception:  # they then simply expire
            logger.exception("could not release a rollout's node locks")

    def _renewal_due(self) -> bool:
        return bool(self.leases.held) and self.leases.renewal_age() >= self.leases.ttl / 3

    def _run(self) -> None:
        with self.app.app_context():
            while not self._stop.wait(self.interval):
                try:
                    self.flush()
                except Exception:
                    logger.exception("could not record a rollout's progress; retrying")


def _update_many(conn: Any, model: Any, rows: dict[int, dict[str, Any]],
                 *conditions: Any) -> None:
    """UPDATE rows by id, one executemany per set of columns."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row_id, values in rows.items():
        groups.setdefault(tuple(sorted(values)), []).append(
            {"row_id": row_id, **{f"v_{key}": value for key, value in values.items()}})
    for keys, params in groups.items():
        statement = (update(model).where(model.id == bindparam("row_id"), *conditions)
                     .values({key: bindparam(f"v_{key}") for key in keys}))
        conn.execute(statement, params)


# --------------------------------------------------------------------------- #
# Deploying a batch of nodes                                                  #
# --------------------------------------------------------------------------- #

@dataclass(frozen=True)
class RolloutPlan:
    """What every node of a rollout needs to know about it."""

    id: int
    kind: RolloutKind
    site_id: int | None
    triggered_by_id: int | None
    target_version_id: int | None


@dataclass
class _Prepared:
    job: NodeJob | None = None
    error: BaseException | None = None
    # What setting sites aside and rendering again needs (None for a rollback,
    # which deploys a recorded version as it was).
    retry: _Retry | None = None


@dataclass
class _Retry:
    """A node's rendering inputs, kept to render it again with sites set aside."""

    node: NodeSpec
    engine: str
    state: PoolState
    before: dict[str, int]
    aside: set[int]
    render: NodeRender
    own: int | None  # the rollout's own site


def _prepare(app: Flask, plan: RolloutPlan, items: list[tuple[int, int]], recorder: Recorder,
             steps_before: list[dict[str, Any]],
             started_at: datetime | None) -> dict[int, _Prepared]:
    """Render and record a version for each (deployment, node) whose lease is held:
    the sites of each pool are read once, every node gets its own files, the versions
    are written in one transaction.  Leaves the session without a connection."""
    cfg = app.config
    started = time.monotonic()
    prepared: dict[int, _Prepared] = {}
    node_ids = [node_id for _, node_id in items]
    nodes = {node.id: node
             for node in db.session.scalars(select(Node).where(Node.id.in_(node_ids)))}
    target_version: ConfigVersion | None = None
    if plan.kind == RolloutKind.ROLLBACK:
        target_version = (db.session.get(ConfigVersion, plan.target_version_id)
                          if plan.target_version_id is not None else None)
    states: dict[int, PoolState] = {}
    rendered: dict[int, tuple[Node, dict[str, str], dict[str, int], dict[int, str]]] = {}
    retries: dict[int, tuple[NodeSpec, PoolState, set[int], NodeRender]] = {}
    for deployment_id, node_id in items:
        node = nodes.get(node_id)
        try:
            if node is None:
                raise NotFound("the node was deleted")
            if plan.kind == RolloutKind.ROLLBACK:
                if target_version is None:
                    raise NotFound("the version to roll back to no longer exists")
                site_versions = dict(target_version.site_versions)
                rendered[deployment_id] = (node, version_files(target_version), site_versions,
                                           _domains(site_versions))
            else:
                if node.pool_id not in states:
                    states[node.pool_id] = PoolState.load(node.pool_id)
                state = states[node.pool_id]
                # Versions a node refused stay aside, except in their own site's rollout.
                aside = set(state.refused - {plan.site_id})
                spec = rendering.node_spec(node)
                result = render_node(spec, node.proxy_type.value, state, aside)
                rendered[deployment_id] = (node, result.files, result.versions, state.domains)
                retries[deployment_id] = (spec, state, aside, result)
        except Exception as exc:
            prepared[deployment_id] = _Prepared(error=exc)
    if not rendered:
        db.session.rollback()
        return prepared
    ids = [node.id for node, *_ in rendered.values()]
    previous = _last_taken(ids, with_files=True)
    numbers = dict(db.session.execute(
        select(ConfigVersion.node_id, func.max(ConfigVersion.version))
        .where(ConfigVersion.node_id.in_(ids)).group_by(ConfigVersion.node_id)).all())
    order = list(rendered)
    rows = []
    for deployment_id in order:
        node, files, site_versions, _ = rendered[deployment_id]
        rows.append({"node_id": node.id, "version": (numbers.get(node.id) or 0) + 1,
                     "files": json.dumps(files), "sha256": files_digest(files),
                     "site_versions": site_versions, "file_count": len(files),
                     "created_by_id": plan.triggered_by_id, "created_at": utcnow()})
    # The node's lease makes max()+1 safe.
    version_ids = list(db.session.scalars(
        insert(ConfigVersion).returning(ConfigVersion.id, sort_by_parameter_order=True),
        rows))
    db.session.commit()
    render_seconds = round(time.monotonic() - started, 4)
    for deployment_id, version_id, row in zip(order, version_ids, rows, strict=True):
        node, files, site_versions, domains = rendered[deployment_id]
        values: dict[str, Any] = {"status": DeploymentStatus.RUNNING, "step": "render",
                                  "config_version_id": version_id}
        if started_at is not None:
            values["started_at"] = started_at
        recorder.update(deployment_id, **values)
        before, before_files = previous.get(node.id, ({}, None))
        changed = _changed_hosts(before, site_versions, domains,
                                 plan.site_id)
        steps = [*steps_before, {"step": "render", "seconds": render_seconds, "ok": True}]
        retry = None
        if deployment_id in retries:
            spec, state, aside, result = retries[deployment_id]
            retry = _Retry(node=spec, engine=node.proxy_type.value, state=state,
                           before=before, aside=aside, render=result, own=plan.site_id)
        prepared[deployment_id] = _Prepared(job=NodeJob(
            target=ssh_target(node), config_dir=node.config_dir,
            files={path: text.encode() for path, text in files.items()},
            release_name=f"{RELEASE_PREFIX}{row['version']}-{secrets.token_hex(4)}",
            test_command=shlex.split(node.test_command),
            reload_command=shlex.split(node.reload_command),
            verify_address=node.listen_address or node.host, verify_port=node.http_port,
            verify_hosts=changed[:cfg["DEPLOY_VERIFY_MAX_SITES"]],
            probe=expected_probe(node, files),
            previous_probe=(expected_probe(node, before_files) if before_files is not None
                            else None),
            command_timeout=cfg["SSH_OPERATION_TIMEOUT"],
            verify_timeout=cfg["DEPLOY_VERIFY_TIMEOUT"], steps=steps,
        ), retry=retry)
    return prepared


def _run_node(app: Flask, plan: RolloutPlan, deployment_id: int, node_id: int | None,
              prepared: _Prepared | None, leases: NodeLeases,
              recorder: Recorder) -> DeploymentStatus:
    """Carry out one node's deployment end to end; never raises."""
    with app.app_context():
        try:
            return _deploy_node(app, plan, deployment_id, node_id, prepared, leases, recorder)
        except Exception as exc:  # a bug must not leave the row "running"
            logger.exception("deployment %s failed unexpectedly", deployment_id)
            recorder.finish(deployment_id, node_id, DeploymentStatus.FAILED, _describe(exc), [])
            return DeploymentStatus.FAILED
        finally:
            db.session.remove()


def _deploy_node(app: Flask, plan: RolloutPlan, deployment_id: int, node_id: int | None,
                 prepared: _Prepared | None, leases: NodeLeases,
                 recorder: Recorder) -> DeploymentStatus:
    cfg = app.config
    steps: list[dict[str, Any]] = []
    if node_id is None:
        recorder.finish(deployment_id, None, DeploymentStatus.FAILED, "the node was deleted",
                        steps)
        return DeploymentStatus.FAILED
    try:
        if prepared is None:
            # The node was busy when the batch took its leases: wait for it alone.
            recorder.update(deployment_id, status=DeploymentStatus.RUNNING, step="lock",
                            started_at=utcnow())
            waited = leases.acquire(node_id, cfg["DEPLOY_LOCK_WAIT"])
            steps.append({"step": "lock", "seconds": round(waited, 4), "ok": True})
            try:
                prepared = _prepare(app, plan, [(deployment_id, node_id)], recorder, steps,
                                    None)[deployment_id]
            finally:
                db.session.remove()  # no connection held while the node is worked on
        if prepared.error is not None:
            raise prepared.error
        assert prepared.job is not None
        job = prepared.job
        steps = job.steps

        def on_step(step: str) -> None:
            leases.check(node_id)
            recorder.update(deployment_id, step=step)

        job.on_step = on_step
        note = _run_setting_aside(app, plan, deployment_id, node_id, prepared, recorder)
    except StepFailed as failure:
        if isinstance(failure.__cause__, HostKeyChanged):  # the key changed after the swap
            _hold_presented_key(node_id, failure.__cause__)
        status = (DeploymentStatus.ROLLED_BACK if failure.step == "verify"
                  else DeploymentStatus.FAILED)
        note = "" if failure.restored else (
            " The previous configuration could not be put back: the node is flagged for a "
            "drift check.")
        recorder.finish(deployment_id, node_id, status,
                        f"{failure.step}: {failure.message}{note}", steps,
                        drifted=not failure.restored)
        return status
    except HostKeyChanged as exc:
        _hold_presented_key(node_id, exc)
        recorder.finish(deployment_id, node_id, DeploymentStatus.FAILED, _describe(exc), steps)
        return DeploymentStatus.FAILED
    except Exception as exc:
        db.session.rollback()
        recorder.finish(deployment_id, node_id, DeploymentStatus.FAILED, _describe(exc), steps)
        return DeploymentStatus.FAILED
    recorder.finish(deployment_id, node_id, DeploymentStatus.SUCCEEDED, note, steps)
    return DeploymentStatus.SUCCEEDED


def _run_setting_aside(app: Flask, plan: RolloutPlan, deployment_id: int, node_id: int,
                       prepared: _Prepared, recorder: Recorder) -> str:
    """Run the node's deployment; when the node's test refuses the configuration
    because of some sites (the ones this deployment changes), set them aside and
    deploy the rest: one tenant's bad version never holds back the others.

    Returns the note for the node's deployment: ``"set aside: <the owner's
    sentence>"`` when the rollout's own site was set aside (the node took the rest
    of the pool, not that site's new version), else "".

    :raises StepFailed: as :meth:`_Remote.run`, when no site is to blame or after
        :data:`set_aside.MAX_ROUNDS` rounds."""
    assert prepared.job is not None
    job = prepared.job
    retry = prepared.retry
    # Refusals count once the node took the pool without those sites: a node that
    # refuses everything (a broken test command, a full disk) blames no one.
    refusals: dict[int, tuple[int, str, str]] = {}
    for round_number in range(set_aside.MAX_ROUNDS + 1):
        try:
            _Remote(connector(app), job).run()
        except StepFailed as failure:
            if (retry is None or failure.step != "test" or not failure.restored
                    or round_number == set_aside.MAX_ROUNDS):
                raise
            blamed = _blame(app, job, retry, failure.message)
            if not blamed:
                raise
            for site_id, reason in blamed.items():
                refusals[site_id] = (retry.state.versions[str(site_id)], reason,
                                     failure.message)
            retry.aside |= set(blamed)
            job = _job_again(app, plan, deployment_id, job, retry, recorder)
            continue
        for site_id, (version, reason, output) in refusals.items():
            recorder.sites.refuse(site_id, version, reason, output)
        recorder.sites.verified(job.site_warnings)
        own = refusals.get(plan.site_id) if plan.site_id is not None else None
        return f"{SET_ASIDE_STEP}: {own[1]}" if own else ""
    raise AssertionError("unreachable: the last round raises or returns")


def _suspects(retry: _Retry) -> set[int]:
    """Sites whose version in this rendering differs from what the node took last,
    and that are not set aside already: a refusal is theirs, if anyone's."""
    return {int(site_id) for site_id, version in retry.render.versions.items()
            if retry.before.get(site_id) != version and int(site_id) not in retry.aside}


def _blame(app: Flask, job: NodeJob, retry: _Retry, output: str) -> dict[int, str]:
    """The sites to set aside after the node's test refused ``job``, each with the
    sentence for its owner: the ones its complaint names (with the words about
    them), else the only suspect (with the whole complaint), else those a bisection
    over test-only runs finds (the complaint may be about another site: no words).
    When the bisection runs out of test runs, every changed site but the rollout's
    own, if the node takes that."""
    suspects = _suspects(retry)
    if not suspects:
        return {}
    addresses = [job.target.host, job.verify_address]
    located = set_aside.blamed_sites(output, job.config_dir, retry.render.files,
                                     retry.render.site_files, retry.state.domains, suspects)
    if located:
        return {site_id: set_aside.owner_reason(line, addresses)
                for site_id, line in located.items()}
    if len(suspects) == 1:
        return dict.fromkeys(suspects, set_aside.owner_reason(output, addresses))
    pool = connector(app)

    def trial(aside: set[int]) -> tuple[bool, str]:
        files = render_node(retry.node, retry.engine, retry.state, retry.aside | aside).files
        staged = replace(job, files={path: text.encode() for path, text in files.items()},
                         release_name=f"{RELEASE_PREFIX}trial-{secrets.token_hex(4)}",
                         steps=[])
        return _Remote(pool, staged).test_only()

    def passes(aside: set[int]) -> bool:
        return trial(aside)[0]

    found = set_aside.isolate(suspects, passes)
    if found:
        # What the node says of each alone is about that site only: its owner's words.
        reasons = {}
        for number, site_id in enumerate(sorted(found)):
            said = ""
            if number < set_aside.MAX_EXPLAINED:
                alone_ok, output_alone = trial(suspects - {site_id})
                said = "" if alone_ok else output_alone
            reasons[site_id] = set_aside.owner_reason(said, addresses)
        return reasons
    others = suspects - {retry.own} if retry.own is not None else set()
    if others and others != suspects and passes(others):
        return dict.fromkeys(others, set_aside.UNTOLD)
    return {}


def _job_again(app: Flask, plan: RolloutPlan, deployment_id: int, job: NodeJob,
               retry: _Retry, recorder: Recorder) -> NodeJob:
    """The node's job rendered again with ``retry.aside`` set aside, recorded as a new
    version (the node's lease makes max()+1 safe)."""
    retry.render = render_node(retry.node, retry.engine, retry.state, retry.aside)
    files = retry.render.files
    node_id = job.target.node_id
    try:
        number = (db.session.scalar(select(func.max(ConfigVersion.version))
                                    .where(ConfigVersion.node_id == node_id)) or 0) + 1
        version = ConfigVersion(node_id=node_id, version=number, files=json.dumps(files),
                                sha256=files_digest(files), site_versions=retry.render.versions,
                                file_count=len(files), created_by_id=plan.triggered_by_id)
        db.session.add(version)
        db.session.commit()
        version_id = version.id
    finally:
        db.session.remove()
    recorder.update(deployment_id, config_version_id=version_id)
    changed = _changed_hosts(retry.before, retry.render.versions, retry.state.domains,
                             plan.site_id)
    return replace(job, files={path: text.encode() for path, text in files.items()},
                   release_name=f"{RELEASE_PREFIX}{number}-{secrets.token_hex(4)}",
                   verify_hosts=changed[:app.config["DEPLOY_VERIFY_MAX_SITES"]],
                   probe=_expected_probe(retry.node, retry.engine, files), site_warnings={})


def _hold_presented_key(node_id: int, exc: HostKeyChanged) -> None:
    """Keep the key the node presented, for an administrator to compare and accept."""
    with db.engine.begin() as conn:
        conn.execute(update(Node).where(Node.id == node_id).values(
            pending_host_key=exc.presented_key))


def _deploy_batch(app: Flask, plan: RolloutPlan, items: list[tuple[int, int | None]],
                  leases: NodeLeases, recorder: Recorder,
                  workers: int) -> list[DeploymentStatus]:
    """Deploy these (deployment, node) pairs in parallel, at most ``workers`` at once.

    Every free node is leased and rendered up front, in one go; a node another
    deployment holds waits for its lease in its own worker and is rendered then, so
    that of two deployments racing for a node the one that gets it last carries the
    newest state of the sites.
    """
    started, started_at = time.monotonic(), utcnow()
    held = leases.try_take([node_id for _, node_id in items if node_id is not None])
    lock_step = {"step": "lock", "seconds": round(time.monotonic() - started, 4), "ok": True}
    # A node named twice gets its second deployment after the first, on its own.
    first = {node_id: deployment_id for deployment_id, node_id in reversed(items)}
    bulk = [(deployment_id, node_id) for deployment_id, node_id in items
            if node_id is not None and node_id in held and first[node_id] == deployment_id]
    prepared: dict[int, _Prepared] = {}
    if bulk:
        try:
            prepared = _prepare(app, plan, bulk, recorder, [lock_step], started_at)
        except Exception as exc:
            logger.exception("rollout %s: preparing %d nodes failed", plan.id, len(bulk))
            prepared = {deployment_id: _Prepared(error=exc) for deployment_id, _ in bulk}
        finally:
            db.session.remove()

    def work(item: tuple[int, int | None]) -> DeploymentStatus:
        return _run_node(app, plan, item[0], item[1], prepared.get(item[0]), leases, recorder)

    if len(items) == 1:
        return [work(items[0])]
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items))),
                            thread_name_prefix=f"rollout-{plan.id}") as executor:
        return list(executor.map(work, items))


def _domains(site_versions: dict[str, int]) -> dict[int, str]:
    ids = [int(i) for i in site_versions]
    if not ids:
        return {}
    rows = db.session.execute(select(Site.id, Site.domain).where(Site.id.in_(ids)))
    return {site_id: domain for site_id, domain in rows}


def _changed_hosts(before: dict[str, int], site_versions: dict[str, int],
                   domains: dict[int, str], focus_site_id: int | None) -> list[tuple[int, str]]:
    """(site id, domain) of the sites whose configuration this deployment changes
    (the rollout's own site first): those are the ones to verify."""
    changed_ids = {int(i) for i, v in site_versions.items() if before.get(i) != v}
    if focus_site_id is not None and str(focus_site_id) in site_versions:
        changed_ids.add(focus_site_id)
    ordered = sorted(changed_ids, key=lambda i: (i != focus_site_id, domains.get(i, "")))
    return [(i, domains[i]) for i in ordered if i in domains]



# --------------------------------------------------------------------------- #
# Rollouts                                                                    #
# --------------------------------------------------------------------------- #

def active_nodes(pool_id: int) -> list[Node]:
    """Nodes that receive deployments: enabled and not draining."""
    stmt = (select(Node).where(Node.pool_id == pool_id, Node.enabled.is_(True),
                               Node.status != NodeStatus.DRAINING).order_by(Node.name))
    return list(db.session.scalars(stmt))


def _create_rollout(actor: User | None, nodes: list[Node], *, kind: RolloutKind,
                    site: Site | None = None, pool_id: int | None = None,
                    canary_node_id: int | None = None,
                    target_version_id: int | None = None) -> Rollout:
    if not nodes:
        raise Conflict("no enabled node to deploy to in this pool")
    actor_id = actor.id if actor is not None else None
    rollout = Rollout(kind=kind, site_id=site.id if site else None,
                      owner_id=site.owner_id if site else None,
                      pool_id=pool_id if pool_id is not None else (site.pool_id if site else None),
                      canary_node_id=canary_node_id, target_version_id=target_version_id,
                      triggered_by_id=actor_id)
    rollout.deployments = [
        Deployment(site_id=site.id if site else None, node_id=node.id, node_name=node.name,
                   triggered_by_id=actor_id)
        for node in nodes
    ]
    db.session.add(rollout)
    db.session.flush()
    return rollout


def deploy_site(actor: User | None, site_id: int, *, canary_node: str | None = None) -> Rollout:
    """Start deploying the site's pool (every active node); returns at once.

    :param actor: None for the system itself (a certificate renewal): no tenancy
        scope, and the audit log and the rollout name no user.
    :param canary_node: name of an active node of the pool to deploy first.
    """
    site: Site = (get_scoped(Site, site_id, actor, "site") if actor is not None
                  else get_or_404(Site, site_id, "site"))
    _check_backends_again(site)
    targets = active_nodes(site.pool_id)
    canary_id = None
    if canary_node:
        canary_id = next((n.id for n in targets if n.name == canary_node), None)
        if canary_id is None:
            raise ValidationError("invalid canary", {
                "canary_node": "must be the name of an active node of the site's pool"})
    with _DEPLOY_REQUESTS:
        # Concurrent requests for one site queue here (the row lock does the same
        # across processes on PostgreSQL), so at most one rollout waits per site.
        db.session.execute(select(Site.id).where(Site.id == site.id).with_for_update())
        queued = _queued_rollout(site.id) if canary_id is None else None
        if queued is not None:
            audit.record(actor, "site.deploy", "site", site.id,
                         {"rollout": queued.id, "joined": True})
            db.session.commit()
            return queued
        rollout = _create_rollout(actor, targets, kind=RolloutKind.DEPLOY, site=site,
                                  canary_node_id=canary_id)
        audit.record(actor, "site.deploy", "site", site.id,
                     {"rollout": rollout.id, "nodes": len(rollout.deployments)})
        db.session.commit()
    launch(rollout.id)
    return rollout


def _check_backends_again(site: Site) -> None:
    """A backend name is checked against the address policy when the site is saved
    and again now: its records may have changed since (DNS rebinding onto the node's
    loopback, a metadata address, another tenant's network).

    :raises ValidationError: naming each backend that now resolves into a denied
        network."""
    if site.blocked:
        return
    address_policy = backends_service.policy()
    errors = {f"backends.{i}.host": f"is not allowed: {reason}"
              for i, backend in enumerate(site.backends)
              if (reason := address_policy.refusal(backend.host)) is not None}
    if errors:
        raise ValidationError("a backend is no longer allowed: change it and save the site",
                              errors)


# Serializes the check-and-create of deploy requests within this process.
_DEPLOY_REQUESTS = threading.Lock()


def _queued_rollout(site_id: int) -> Rollout | None:
    """A deployment of this site that no node has started yet: it renders after it
    takes each node's lease, so it will carry whatever was saved before now, and a
    new request joins it instead of starting another (a burst of requests starts at
    most one rollout besides the one already running)."""
    waiting = (Deployment.status == DeploymentStatus.PENDING) | (
        (Deployment.status == DeploymentStatus.RUNNING) & (Deployment.step == "lock"))
    started = select(Deployment.id).where(Deployment.rollout_id == Rollout.id, ~waiting)
    return db.session.scalar(
        select(Rollout).where(Rollout.site_id == site_id, Rollout.kind == RolloutKind.DEPLOY,
                              Rollout.canary_node_id.is_(None),
                              Rollout.status.in_([DeploymentStatus.PENDING,
                                                  DeploymentStatus.RUNNING]),
                              ~started.exists())
        .order_by(Rollout.id.desc()).limit(1))


def site_rollout_in_flight(site_id: int) -> int | None:
    """The latest rollout of this site that has not finished, in any process."""
    return db.session.scalar(
        select(Rollout.id).where(Rollout.site_id == site_id,
                                 Rollout.status.in_([DeploymentStatus.PENDING,
                                                     DeploymentStatus.RUNNING]))
        .order_by(Rollout.id.desc()).limit(1))


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
    executor.submit("rollout", rollout_id, run_rollout, rollout_id)


def run_rollout(rollout_id: int) -> None:
    """Canary first when asked, then every other node in parallel (bounded)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
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


def _run_rollout(app: Flask, rollout_id: int) -> None:
    rollout = db.session.get(Rollout, rollout_id)
    assert rollout is not None
    rollout.status = DeploymentStatus.RUNNING
    rollout.started_at = utcnow()
    plan = RolloutPlan(id=rollout.id, kind=rollout.kind, site_id=rollout.site_id,
                       triggered_by_id=rollout.triggered_by_id,
                       target_version_id=rollout.target_version_id)
    pending = [(d.id, d.node_id) for d in rollout.deployments]
    canary_id = rollout.canary_node_id
    db.session.commit()
    db.session.remove()
    canary = [d for d in pending if canary_id is not None and d[1] == canary_id]
    rest = [d for d in pending if canary_id is None or d[1] != canary_id]
    leases = NodeLeases(app.config["DEPLOY_LOCK_TTL"])
    recorder = Recorder(app, leases, name=f"rollout-{rollout_id}-recorder")
    error = ""
    try:
        if canary:
            [status] = _deploy_batch(app, plan, canary[:1], leases, recorder, 1)
            if status != DeploymentStatus.SUCCEEDED:
                error = "the canary node failed: the rollout stopped before the other nodes"
                for deployment_id, _ in rest:
                    recorder.update(deployment_id, status=DeploymentStatus.SKIPPED,
                                    finished_at=utcnow(),
                                    error="not attempted: the canary node failed")
                rest = []
        if rest:
            _deploy_batch(app, plan, rest, leases, recorder, app.config["DEPLOY_PARALLELISM"])
    finally:
        recorder.close()
    _conclude(rollout_id, error, recorder.sites)


def _record_site_outcomes(rollout: Rollout, outcomes: SiteOutcomes) -> None:
    """Refused versions and verification warnings onto their sites; each refusal in
    the audit log with what the node printed (administrators read it there)."""
    for site_id, (version, reason, output) in outcomes.refused.items():
        db.session.execute(update(Site).where(Site.id == site_id).values(
            refused_version=version, refused_reason=reason))
        audit.record(None, "site.set_aside", "site", site_id,
                     {"rollout": rollout.id, "version": version, "node_output": output[:2000]})
    for site_id, warning in outcomes.warnings.items():
        db.session.execute(update(Site).where(Site.id == site_id).values(
            deploy_warning=warning))
    own = rollout.site_id
    if own is not None and own not in outcomes.refused and any(
            d.status == DeploymentStatus.SUCCEEDED for d in rollout.deployments):
        # Its owner deployed it and a node took it: it is no longer refused.
        db.session.execute(update(Site).where(Site.id == own).values(
            refused_version=None, refused_reason=""))


def _conclude(rollout_id: int, error: str, outcomes: SiteOutcomes | None = None) -> None:
    rollout = db.session.get(Rollout, rollout_id)
    assert rollout is not None
    db.session.refresh(rollout)
    if outcomes is not None:
        _record_site_outcomes(rollout, outcomes)
    statuses = [d.status for d in rollout.deployments]
    failed = [d for d in rollout.deployments if d.status != DeploymentStatus.SUCCEEDED]
    own_refused = (outcomes.refused.get(rollout.site_id)
                   if outcomes is not None and rollout.site_id is not None else None)
    summary = f"{len(failed)} of {len(statuses)} nodes failed: " + "; ".join(
        f"{d.node_name}: {d.error}" for d in failed if d.status != DeploymentStatus.SKIPPED)
    if own_refused is not None:
        # The other sites of the pool went out; this rollout's own site did not.
        rollout.status = DeploymentStatus.FAILED
        rollout.error = (own_refused[1] + (f" {summary}" if failed else ""))[:4000]
    elif not failed:
        rollout.status = DeploymentStatus.SUCCEEDED
    else:
        rollout.status = DeploymentStatus.FAILED
        rollout.error = (f"{error}. {summary}" if error else summary)[:4000]
    rollout.finished_at = utcnow()
    db.session.commit()
    if rollout.pool_id is not None:
        refresh_site_status(rollout.pool_id)


def refresh_site_status(pool_id: int) -> None:
    """"Deployed on X of Y nodes" for every site of the pool, from what each active
    node last took successfully, and the last error a node reported (or why a node
    refused the site's version).  A version some node took, and none refused, becomes
    the one a node keeps serving when a later version is set aside."""
    nodes = active_nodes(pool_id)
    ids = [node.id for node in nodes]
    carried = carried_versions(ids)
    last = _latest_deployments(ids, [DeploymentStatus.SUCCEEDED, DeploymentStatus.FAILED,
                                     DeploymentStatus.ROLLED_BACK], by_id=True)
    names = {node.id: node.name for node in nodes}
    errors = {node_id: f"{names[node_id]}: {error}" for node_id, status, error in
              db.session.execute(select(last.c.node_id, last.c.status, last.c.error)
                                 .where(last.c.rank == 1))
              if status != DeploymentStatus.SUCCEEDED} if ids else {}
    now = utcnow()
    accepted: list[Site] = []
    for site in db.session.scalars(select(Site).where(Site.pool_id == pool_id)):
        deployed = sum(1 for node_id in ids
                       if carried.get(node_id, {}).get(str(site.id)) == site.config_version)
        site.deployed_nodes, site.target_nodes = deployed, len(nodes)
        refused = site.refused_version == site.config_version
        site.last_deploy_error = (site.refused_reason if refused else "; ".join(
            errors[i] for i in ids if i in errors))[:4000]
        if deployed and not refused and site.accepted_version != site.config_version:
            accepted.append(site)
        if deployed and deployed == len(nodes):
            site.status, site.last_deployed_at = SiteStatus.DEPLOYED, now
        elif deployed:
            site.status, site.last_deployed_at = SiteStatus.PARTIAL, now
        elif errors or refused:
            site.status = SiteStatus.FAILED
    _keep_accepted(accepted)
    db.session.commit()


def _keep_accepted(sites: list[Site]) -> None:
    """Record the settings of versions the nodes took, reading the sites' names,
    backends and users in a few queries (a pool's first deployment accepts them all)."""
    for start in range(0, len(sites), 500):
        chunk = sites[start:start + 500]
        db.session.scalars(select(Site).where(Site.id.in_([site.id for site in chunk]))
                           .options(selectinload(Site.hostnames), selectinload(Site.backends),
                                    selectinload(Site.basic_auth_users))).all()
        for site in chunk:
            site.accepted_spec = set_aside.spec_to_json(rendering.site_spec(site))
            site.accepted_version = site.config_version


def wait(rollout_id: int, timeout: float = 300.0) -> Rollout:
    """Block until a rollout finishes (CLI, tests); the rollout runs regardless."""
    deadline = time.monotonic() + timeout
    while True:
        executor.join("rollout", rollout_id, max(0.0, deadline - time.monotonic()))
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
    """A rollout as ``actor`` may see it. Each failure comes with ``message``, a
    sentence saying what happened and what to do; administrators also get the node's
    name and raw ``error``, while clients get "node 1", "node 2"... and the sentence as
    ``error``: never the fleet's names, addresses or paths (DESIGN: tenancy)."""
    admin = actor.is_admin
    nodes = []
    for index, d in enumerate(rollout.deployments, 1):
        told = explain.node_failure(d.error, d.node_name, admin=admin)
        nodes.append({
            "node": d.node_name if admin else f"node {index}",
            "node_id": d.node_id if admin else None,
            "status": d.status.value,
            "step": d.step,
            "error": d.error if admin else told.summary,
            "message": told.summary,
            "steps": d.steps,
            "version": d.config_version.version if d.config_version else None,
        })
    failed = sum(1 for d in rollout.deployments if d.status in (
        DeploymentStatus.FAILED, DeploymentStatus.ROLLED_BACK))
    set_aside_on = sum(1 for d in rollout.deployments if _site_set_aside(d))
    outcome = explain.rollout_failure(failed, len(nodes), admin=admin, error=rollout.error)
    if set_aside_on:
        # The owner's sentence (free of the fleet's names), then what other nodes did.
        note = next(d.error for d in rollout.deployments if _site_set_aside(d))
        owners = note.partition(": ")[2] + (f" {outcome.summary}" if failed else "")
        outcome = explain.Explanation(rollout.error if admin else owners,
                                      rollout.error if admin else "")
    elif rollout.error and not failed:  # refused before any node was touched
        # Only this case shows a client raw text, so only it reads the pool's sites
        # (a progress stream asks twice a second: its cost must not grow with the pool).
        shown = rollout.error if admin else redactor(actor, rollout.pool_id)(rollout.error)
        outcome = explain.Explanation(shown, rollout.error if admin else "")
    return {
        "id": rollout.id,
        "kind": rollout.kind.value,
        "site_id": rollout.site_id,
        "status": rollout.status.value,
        "error": rollout.error if admin else outcome.summary,
        "message": outcome.summary,
        "created_at": rollout.created_at,
        "started_at": rollout.started_at,
        "finished_at": rollout.finished_at,
        "deployed": sum(1 for d in rollout.deployments
                        if d.status == DeploymentStatus.SUCCEEDED and not _site_set_aside(d)),
        "nodes": nodes,
    }


def _site_set_aside(deployment: Deployment) -> bool:
    """The node took the pool but set the rollout's own site aside."""
    return (deployment.status == DeploymentStatus.SUCCEEDED
            and deployment.error.startswith(f"{SET_ASIDE_STEP}: "))


def list_rollouts(actor: User, *, site_id: int | None = None, page: int = 1,
                  per_page: int = 50, status: str | None = None,
                  q: str | None = None) -> Page[Rollout]:
    """Newest first; ``status`` one of the statuses, ``q`` part of the site's name."""
    stmt = scoped(select(Rollout), actor, Rollout).options(
        selectinload(Rollout.deployments).selectinload(Deployment.config_version))
    if site_id is not None:
        get_scoped(Site, site_id, actor, "site")
        stmt = stmt.where(Rollout.site_id == site_id)
    if status:
        try:
            stmt = stmt.where(Rollout.status == DeploymentStatus(status))
        except ValueError:
            raise ValidationError("unknown status", {"status": "unknown status"}) from None
    if q:
        stmt = stmt.where(Rollout.site_id.in_(
            select(Site.id).where(Site.domain.like(f"%{q.lower()}%"))))
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


def get_version_number(actor: User, node_id: int, number: int) -> ConfigVersion:
    """A node's version by its number (as ``nodes versions`` lists them)."""
    require_admin(actor)
    version = db.session.scalar(select(ConfigVersion).where(
        ConfigVersion.node_id == node_id, ConfigVersion.version == number))
    if version is None:
        raise NotFound(f"the node has no version {number}")
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
