"""Deploying a batch of nodes in parallel: lease, render and record every free node up
front, then run each node's release, setting aside the sites a node refuses so that
one tenant's bad version never holds back the others.
"""

from __future__ import annotations

import logging
import secrets
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from flask import Flask
from sqlalchemy import func, insert, select, update

from app.connector import (
    HostKeyChanged,
)
from app.engines.base import NodeSpec
from app.errors import NotFound
from app.extensions import db, ssh
from app.models import (
    ConfigVersion,
    DeploymentStatus,
    Node,
    RolloutKind,
)
from app.models.base import utcnow
from app.observability import carry_request_id
from app.services import rendering, set_aside
from app.services.deployments.blobs import store_files
from app.services.deployments.desired_state import (
    NodeRender,
    PoolState,
    changed_hosts,
    expected_probe,
    probe_for,
    render_node,
    site_domains,
    ssh_target,
)
from app.services.deployments.history import (
    last_taken,
    recorded_manifest,
    version_files,
    version_manifest,
)
from app.services.deployments.recorder import Recorder
from app.services.deployments.release import (
    RELEASE_PREFIX,
    NodeJob,
    Release,
    StepFailed,
    describe_failure,
    manifest_digest,
    release_name,
)
from app.services.node_leases import NodeLeases

logger = logging.getLogger(__name__)

# The note on a node's deployment that took the pool without its rollout's own site.
SET_ASIDE_STEP = "set aside"


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
    rendered: dict[int, tuple[Node, dict[str, str], dict[str, str], dict[str, int],
                              dict[int, str]]] = {}
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
                rendered[deployment_id] = (node, version_files(target_version, keys=True),
                                           version_manifest(target_version), site_versions,
                                           site_domains(site_versions))
            else:
                if node.pool_id not in states:
                    states[node.pool_id] = PoolState.load(node.pool_id)
                state = states[node.pool_id]
                # Versions a node refused stay aside, except in their own site's rollout.
                aside = set(state.refused - {plan.site_id})
                spec = rendering.node_spec(node)
                result = render_node(spec, node.proxy_type.value, state, aside)
                rendered[deployment_id] = (node, result.files, result.manifest, result.versions,
                                           state.domains)
                retries[deployment_id] = (spec, state, aside, result)
        except Exception as exc:
            prepared[deployment_id] = _Prepared(error=exc)
    if not rendered:
        db.session.rollback()
        return prepared
    ids = [node.id for node, *_ in rendered.values()]
    previous = last_taken(ids, with_manifests=True)
    numbers = dict(db.session.execute(
        select(ConfigVersion.node_id, func.max(ConfigVersion.version))
        .where(ConfigVersion.node_id.in_(ids)).group_by(ConfigVersion.node_id)).all())
    order = list(rendered)
    store_files([rendered[deployment_id][1] for deployment_id in order],
                [rendered[deployment_id][2] for deployment_id in order],
                stored={digest for taken in previous.values() if taken.manifest is not None
                        for digest in taken.manifest.values()})
    rows: list[dict[str, Any]] = []
    for deployment_id in order:
        node, files, manifest, site_versions, _ = rendered[deployment_id]
        rows.append({"node_id": node.id, "version": (numbers.get(node.id) or 0) + 1,
                     **recorded_manifest(manifest, previous.get(node.id)),
                     "sha256": manifest_digest(manifest),
                     "site_versions": site_versions, "file_count": len(files),
                     "created_by_id": plan.triggered_by_id, "created_at": utcnow()})
    # The node's lease makes max()+1 safe.
    version_ids = list(db.session.scalars(
        insert(ConfigVersion).returning(ConfigVersion.id, sort_by_parameter_order=True),
        rows))
    db.session.commit()
    render_seconds = round(time.monotonic() - started, 4)
    for deployment_id, version_id, row in zip(order, version_ids, rows, strict=True):
        node, files, manifest, site_versions, domains = rendered[deployment_id]
        values: dict[str, Any] = {"status": DeploymentStatus.RUNNING, "step": "render",
                                  "config_version_id": version_id}
        if started_at is not None:
            values["started_at"] = started_at
        recorder.update(deployment_id, **values)
        taken = previous.get(node.id)
        before = taken.site_versions if taken is not None else {}
        before_manifest = taken.manifest if taken is not None else None
        releases = node.config_dir.rstrip("/") + ".releases"
        changed = changed_hosts(before, site_versions, domains,
                                 plan.site_id)
        steps = [*steps_before, {"step": "render", "seconds": render_seconds, "ok": True}]
        retry = None
        if deployment_id in retries:
            spec, state, aside, result = retries[deployment_id]
            retry = _Retry(node=spec, engine=node.proxy_type.value, state=state,
                           before=before, aside=aside, render=result, own=plan.site_id)
        prepared[deployment_id] = _Prepared(job=NodeJob(
            target=ssh_target(node), config_dir=node.config_dir,
            files=files, manifest=manifest,
            release_name=release_name(row["version"], row["sha256"]),
            test_command=shlex.split(node.test_command),
            reload_command=shlex.split(node.reload_command),
            verify_address=node.listen_address or node.host, verify_port=node.http_port,
            verify_hosts=changed[:cfg["DEPLOY_VERIFY_MAX_SITES"]],
            probe=expected_probe(node, manifest),
            previous_probe=(expected_probe(node, before_manifest)
                            if before_manifest is not None else None),
            base_manifest=before_manifest,
            # A node found drifted is looked at, not trusted.
            known_release=(f"{releases}/{taken.release}"
                           if taken is not None and not node.drifted else None),
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
            recorder.finish(deployment_id, node_id, DeploymentStatus.FAILED,
                            describe_failure(exc), [])
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
        presented = failure.key_changed or (
            failure.__cause__ if isinstance(failure.__cause__, HostKeyChanged) else None)
        if presented is not None:  # the key changed after the swap
            _hold_presented_key(node_id, presented)
        status = (DeploymentStatus.ROLLED_BACK if failure.step == "verify"
                  else DeploymentStatus.FAILED)
        note = "" if failure.restored else (
            " The previous configuration could not be put back: the node is flagged for a "
            "drift check.")
        if failure.key_changed is not None:
            note += (" The node presented another SSH host key meanwhile: an administrator "
                     "must check it and accept it before the node can be deployed to.")
        recorder.finish(deployment_id, node_id, status,
                        f"{failure.step}: {failure.message}{note}", steps,
                        drifted=not failure.restored)
        return status
    except HostKeyChanged as exc:
        _hold_presented_key(node_id, exc)
        recorder.finish(deployment_id, node_id, DeploymentStatus.FAILED, describe_failure(exc),
                        steps)
        return DeploymentStatus.FAILED
    except Exception as exc:
        db.session.rollback()
        recorder.finish(deployment_id, node_id, DeploymentStatus.FAILED, describe_failure(exc),
                        steps)
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

    :raises StepFailed: as :meth:`Release.run`, when no site is to blame or after
        :data:`set_aside.MAX_ROUNDS` rounds."""
    assert prepared.job is not None
    job = prepared.job
    retry = prepared.retry
    # Refusals count once the node took the pool without those sites: a node that
    # refuses everything (a broken test command, a full disk) blames no one.
    refusals: dict[int, tuple[int, str, str]] = {}
    for round_number in range(set_aside.MAX_ROUNDS + 1):
        try:
            Release(ssh.pool(app), job).run()
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
    pool = ssh.pool(app)

    def trial(aside: set[int]) -> tuple[bool, str]:
        render = render_node(retry.node, retry.engine, retry.state, retry.aside | aside)
        staged = replace(job, files=render.files, manifest=render.manifest,
                         release_name=f"{RELEASE_PREFIX}trial-{secrets.token_hex(4)}",
                         steps=[])
        return Release(pool, staged).test_only()

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
    files, manifest = retry.render.files, retry.render.manifest
    node_id = job.target.node_id
    try:
        number = (db.session.scalar(select(func.max(ConfigVersion.version))
                                    .where(ConfigVersion.node_id == node_id)) or 0) + 1
        version = ConfigVersion(node_id=node_id, version=number,
                                manifest=store_files([files], [manifest])[0],
                                sha256=manifest_digest(manifest),
                                site_versions=retry.render.versions,
                                file_count=len(files), created_by_id=plan.triggered_by_id)
        db.session.add(version)
        db.session.commit()
        version_id = version.id
    finally:
        db.session.remove()
    recorder.update(deployment_id, config_version_id=version_id)
    changed = changed_hosts(retry.before, retry.render.versions, retry.state.domains,
                             plan.site_id)
    return replace(job, files=files, manifest=manifest,
                   release_name=release_name(number, manifest_digest(manifest)),
                   verify_hosts=changed[:app.config["DEPLOY_VERIFY_MAX_SITES"]],
                   probe=probe_for(retry.node, retry.engine, manifest), site_warnings={})


def _hold_presented_key(node_id: int, exc: HostKeyChanged) -> None:
    """Keep the key the node presented, for an administrator to compare and accept."""
    with db.engine.begin() as conn:
        conn.execute(update(Node).where(Node.id == node_id).values(
            pending_host_key=exc.presented_key))


def deploy_batch(app: Flask, plan: RolloutPlan, items: list[tuple[int, int | None]],
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
        return list(executor.map(carry_request_id(work), items))
