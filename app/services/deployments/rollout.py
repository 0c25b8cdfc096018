"""Rollouts as people ask for them: deploy a site (to every active node of its pool),
deploy nodes, roll a node back; run them in the background, conclude them, and show
them to each person as they may see them.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from flask import Flask, current_app
from sqlalchemy import or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import selectinload

from app.errors import Conflict, NotFound, ValidationError
from app.executor import background, distributed, executor
from app.extensions import db
from app.models import (
    DeploymentStatus,
    Node,
    NodeDeployment,
    Rollout,
    RolloutKind,
    Site,
    SiteStatus,
    User,
)
from app.models.base import utcnow
from app.observability import count_rollout, request_id
from app.services import audit, explain, notifiers, rendering, set_aside
from app.services import backends as backends_service
from app.services.common import Page, get_or_404, get_scoped, paginate, require_admin, scoped
from app.services.deployments.batch import SET_ASIDE_STEP, RolloutPlan, deploy_batch
from app.services.deployments.desired_state import active_nodes
from app.services.deployments.history import carried_versions, get_version, latest_deployments
from app.services.deployments.recorder import Recorder, SiteOutcomes, update_many
from app.services.deployments.release import describe_failure
from app.services.node_leases import NodeLeases

logger = logging.getLogger(__name__)

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
                      triggered_by_id=actor_id, request_id=request_id.get())
    rollout.deployments = [
        NodeDeployment(site_id=site.id if site else None, node_id=node.id, node_name=node.name,
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
    waiting = (NodeDeployment.status == DeploymentStatus.PENDING) | (
        (NodeDeployment.status == DeploymentStatus.RUNNING) & (NodeDeployment.step == "lock"))
    started = select(NodeDeployment.id).where(NodeDeployment.rollout_id == Rollout.id, ~waiting)
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


_UNFINISHED = (DeploymentStatus.PENDING, DeploymentStatus.RUNNING)


def resume_lost() -> str:
    """Launch again the rollouts whose run was lost: a run that died (its lease on
    the rollout expired unfinished: a process killed, a machine gone) or a rollout
    that never started (a queue lost with its broker, a process stopped between
    the request and the start).  Otherwise such a rollout would stay unfinished for
    ever, and deploy requests for its site join it instead of starting another.

    A rollout waiting for a run is given ``ROLLOUT_RESUME_AFTER`` seconds, and with
    the task engine at least the broker's visibility timeout (a task may queue that
    long behind others); launching one twice is safe (:func:`run_rollout`).
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    patience = float(app.config["ROLLOUT_RESUME_AFTER"])
    if distributed(app):
        patience = max(patience, float(app.config["CELERY_VISIBILITY_TIMEOUT"]))
    now = utcnow()
    lost = list(db.session.scalars(select(Rollout.id).where(
        Rollout.status.in_(_UNFINISHED),
        or_(Rollout.runner_expires_at < now,
            Rollout.runner_expires_at.is_(None)
            & (Rollout.created_at < now - timedelta(seconds=patience))))
        .order_by(Rollout.id)))
    db.session.rollback()
    for rollout_id in lost:
        logger.warning("rollout %s: its run was lost; launching it again", rollout_id)
        launch(rollout_id)
    return f"{len(lost)} rollout(s) launched again" if lost else "no rollout was lost"


class RunnerLease:
    """A run's lease on its rollout (``Rollout.runner``), renewed by a thread of its
    own while the run works, with the node leases' time to live.

    The task engine delivers a task at least once: the same rollout may be run
    twice, after its first run died or while it still runs (the broker's
    visibility timeout).  Only the holder of this lease runs it; another run waits
    until the holder ends the rollout or dies, and a dead holder's lease expires."""

    def __init__(self, app: Flask, rollout_id: int) -> None:
        self.app = app
        self.rollout_id = rollout_id
        self.ttl = float(app.config["DEPLOY_LOCK_TTL"])
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"[:128]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self) -> bool:
        """Wait (with backoff) until the rollout is ours to run.

        :returns: True once it is; False when it has finished (another run ended
            it) or no longer exists.
        """
        delay = 0.05
        while True:
            now = utcnow()
            status: DeploymentStatus | None = DeploymentStatus.PENDING
            try:
                with db.engine.begin() as conn:
                    taken = conn.execute(update(Rollout).where(
                        Rollout.id == self.rollout_id, Rollout.status.in_(_UNFINISHED),
                        or_(Rollout.runner_expires_at.is_(None),
                            Rollout.runner_expires_at < now))
                        .values(runner=self.holder,
                                runner_expires_at=now + timedelta(seconds=self.ttl))).rowcount
                    if not taken:
                        status = conn.scalar(select(Rollout.status)
                                             .where(Rollout.id == self.rollout_id))
            except OperationalError as exc:
                # SQLite answers "database is locked" when writers pile up: try again.
                if "locked" not in str(exc):
                    raise
                taken = 0
            if taken:
                self._thread = threading.Thread(target=self._renew, daemon=True,
                                                name=f"rollout-{self.rollout_id}-lease")
                self._thread.start()
                return True
            if status is None or status.finished:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _renew(self) -> None:
        with self.app.app_context():
            while not self._stop.wait(self.ttl / 3):
                try:
                    with db.engine.begin() as conn:
                        kept = conn.execute(update(Rollout).where(
                            Rollout.id == self.rollout_id, Rollout.runner == self.holder)
                            .values(runner_expires_at=utcnow() + timedelta(seconds=self.ttl)))
                except Exception:  # noqa: BLE001 - the next round tries again
                    logger.warning("rollout %s: could not renew its lease", self.rollout_id,
                                   exc_info=True)
                    continue
                if not kept.rowcount:
                    logger.warning("rollout %s: its lease expired and another run took it",
                                   self.rollout_id)
                    return

    def release(self) -> None:
        """Stop renewing and give the lease back (the rollout keeps its last runner's
        name); a lease that cannot be given back expires."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            with db.engine.begin() as conn:
                conn.execute(update(Rollout).where(
                    Rollout.id == self.rollout_id, Rollout.runner == self.holder)
                    .values(runner_expires_at=None))
        except Exception:  # noqa: BLE001 - it expires instead
            logger.warning("rollout %s: could not give its lease back", self.rollout_id,
                           exc_info=True)


@background("rollout")
def run_rollout(rollout_id: int) -> None:
    """Canary first when asked, then every other node in parallel (bounded).

    Safe to run again: a rollout that finished is left alone, and a second run
    waits while the first one lives (:class:`RunnerLease`).  After a first run that
    died it deploys the nodes left unfinished, each once its node lease (held by the
    dead run) has expired, and leaves the finished ones as they are.  A node's
    release swap is atomic, so the dead run left each node on its previous release
    or on the new one, never between them.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    lease = RunnerLease(app, rollout_id)
    if not lease.take():
        return
    try:
        _run_rollout(app, rollout_id)
    except Exception as exc:
        logger.exception("rollout %s failed", rollout_id)
        with db.engine.begin() as conn:
            conn.execute(update(Rollout).where(Rollout.id == rollout_id).values(
                status=DeploymentStatus.FAILED, error=describe_failure(exc), finished_at=utcnow()))
            conn.execute(update(NodeDeployment).where(
                NodeDeployment.rollout_id == rollout_id,
                NodeDeployment.status.in_(_UNFINISHED))
                .values(status=DeploymentStatus.FAILED, finished_at=utcnow(),
                        error="interrupted: " + describe_failure(exc)))
    finally:
        lease.release()


def _run_rollout(app: Flask, rollout_id: int) -> None:
    rollout = db.session.get(Rollout, rollout_id)
    assert rollout is not None
    if rollout.status == DeploymentStatus.RUNNING:
        logger.warning("rollout %s: its previous run stopped; carrying on from its "
                       "unfinished nodes", rollout_id)
    rollout.status = DeploymentStatus.RUNNING
    if rollout.started_at is None:
        rollout.started_at = utcnow()
    plan = RolloutPlan(id=rollout.id, kind=rollout.kind, site_id=rollout.site_id,
                       triggered_by_id=rollout.triggered_by_id,
                       target_version_id=rollout.target_version_id)
    canary_id = rollout.canary_node_id
    pending = [(d.id, d.node_id) for d in rollout.deployments if not d.status.finished]
    # The canary's outcome, when a previous run got that far.
    canary_status = next((d.status for d in rollout.deployments
                          if canary_id is not None and d.node_id == canary_id
                          and d.status.finished), None)
    db.session.commit()
    db.session.remove()
    canary = [d for d in pending if canary_id is not None and d[1] == canary_id]
    rest = [d for d in pending if canary_id is None or d[1] != canary_id]
    leases = NodeLeases(app.config["DEPLOY_LOCK_TTL"])
    recorder = Recorder(app, leases, name=f"rollout-{rollout_id}-recorder")
    error = ""
    try:
        if canary:
            [canary_status] = deploy_batch(app, plan, canary[:1], leases, recorder, 1)
        if canary_status is not None and canary_status != DeploymentStatus.SUCCEEDED:
            error = "the canary node failed: the rollout stopped before the other nodes"
            for deployment_id, _ in rest:
                recorder.update(deployment_id, status=DeploymentStatus.SKIPPED,
                                finished_at=utcnow(), error="not attempted: the canary node failed")
            rest = []
        if rest:
            deploy_batch(app, plan, rest, leases, recorder, app.config["DEPLOY_PARALLELISM"])
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
    if rollout.status.finished:
        # Another run concluded it (this one had lost its lease meanwhile).
        db.session.rollback()
        return
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
    count_rollout(rollout)
    if rollout.pool_id is not None:
        refresh_site_status(rollout.pool_id)
    notifiers.rollout_concluded(rollout)


def refresh_site_status(pool_id: int) -> None:
    """"Deployed on X of Y nodes" for every site of the pool, from what each active
    node last took successfully, and the last error a node reported (or why a node
    refused the site's version).  A version some node took, and none refused, becomes
    the one a node keeps serving when a later version is set aside.

    Reads the columns it needs without building a model per site, and writes only the
    sites whose state changed: after a one-site change, one row or a few, however big
    the pool.  ``last_deployed_at`` moves when a site's deployed state changes."""
    nodes = active_nodes(pool_id)
    ids = [node.id for node in nodes]
    carried = carried_versions(ids)
    last = latest_deployments(ids, [DeploymentStatus.SUCCEEDED, DeploymentStatus.FAILED,
                                     DeploymentStatus.ROLLED_BACK], by_id=True)
    names = {node.id: node.name for node in nodes}
    errors = {node_id: f"{names[node_id]}: {error}" for node_id, status, error in
              db.session.execute(select(last.c.node_id, last.c.status, last.c.error)
                                 .where(last.c.rank == 1))
              if status != DeploymentStatus.SUCCEEDED} if ids else {}
    node_error = "; ".join(errors[i] for i in ids if i in errors)[:4000]
    now = utcnow()
    accepted: list[int] = []
    changes: dict[int, dict[str, Any]] = {}
    rows = db.session.execute(select(
        Site.id, Site.config_version, Site.refused_version, Site.refused_reason,
        Site.accepted_version, Site.deployed_nodes, Site.target_nodes, Site.status,
        Site.last_deploy_error).where(Site.pool_id == pool_id))
    for row in rows:
        deployed = sum(1 for node_id in ids
                       if carried.get(node_id, {}).get(str(row.id)) == row.config_version)
        refused = row.refused_version == row.config_version
        values: dict[str, Any] = {
            "deployed_nodes": deployed, "target_nodes": len(nodes),
            "last_deploy_error": (row.refused_reason[:4000] if refused else node_error)}
        if deployed and not refused and row.accepted_version != row.config_version:
            accepted.append(row.id)
        if deployed:
            values["status"] = (SiteStatus.DEPLOYED if deployed == len(nodes)
                                else SiteStatus.PARTIAL)
        elif errors or refused:
            values["status"] = SiteStatus.FAILED
        changed = {key: value for key, value in values.items() if getattr(row, key) != value}
        if deployed and changed.keys() & {"deployed_nodes", "target_nodes", "status"}:
            changed["last_deployed_at"] = now
        if changed:
            changes[row.id] = changed
    with db.session.no_autoflush:
        update_many(db.session.connection(), Site, changes)
    _keep_accepted(accepted)
    db.session.commit()


def _keep_accepted(site_ids: list[int]) -> None:
    """Record the settings of versions the nodes took, reading the sites' names,
    backends and users in a few queries (a pool's first deployment accepts them all)."""
    for start in range(0, len(site_ids), 500):
        chunk = db.session.scalars(
            select(Site).where(Site.id.in_(site_ids[start:start + 500]))
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


def get_rollout(actor: User, rollout_id: int) -> Rollout:
    rollout = db.session.scalar(scoped(select(Rollout).where(Rollout.id == rollout_id), actor,
                                       Rollout))
    if rollout is None:
        raise NotFound("deployment not found")
    return rollout


def rollout_state(actor_id: int, rollout_id: int) -> dict[str, Any]:
    """A rollout as its progress page follows it: ``rollout_to_dict`` plus ``finished``.

    Read afresh, since another process may be running the rollout, and the read
    transaction ends before returning: a stream asks twice a second and must hold
    none open while it waits.
    """
    db.session.expire_all()
    actor = get_or_404(User, actor_id, "user")
    rollout = get_rollout(actor, rollout_id)
    state = rollout_to_dict(rollout, actor)
    state["finished"] = rollout.status.finished
    db.session.rollback()
    return state


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
            "steps": d.steps if admin else [
                {key: step[key] for key in ("step", "seconds", "ok") if key in step}
                for step in d.steps],
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


def _site_set_aside(deployment: NodeDeployment) -> bool:
    """The node took the pool but set the rollout's own site aside."""
    return (deployment.status == DeploymentStatus.SUCCEEDED
            and deployment.error.startswith(f"{SET_ASIDE_STEP}: "))


def list_rollouts(actor: User, *, site_id: int | None = None, page: int = 1,
                  per_page: int = 50, status: str | None = None,
                  q: str | None = None) -> Page[Rollout]:
    """Newest first; ``status`` one of the statuses, ``q`` part of the site's name."""
    stmt = scoped(select(Rollout), actor, Rollout).options(
        selectinload(Rollout.deployments).selectinload(NodeDeployment.config_version))
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
