"""The events that send notices, each turned into the owner's and the administrators'
words (``app.services.explain``): the owner's never name nodes, addresses or paths."""

from __future__ import annotations

from app.executor import background, executor
from app.extensions import db
from app.models import DeploymentStatus, Pool, Rollout, Site
from app.services import explain
from app.services.notifiers.base import Notice
from app.services.notifiers.channels import notify

DEPLOYMENT_FAILED = "deployment.failed"


def rollout_concluded(rollout: Rollout) -> None:
    """Tell the site's owner and the administrators that a rollout failed, once, in the
    background: the rollout's thread never waits for a chat service."""
    if rollout.status == DeploymentStatus.FAILED:
        executor.submit("rollout-notice", rollout.id, _rollout_failed, rollout.id)


@background("rollout-notice")
def _rollout_failed(rollout_id: int) -> None:
    rollout = db.session.get(Rollout, rollout_id)
    if rollout is None:
        return
    failed = sum(d.status != DeploymentStatus.SUCCEEDED for d in rollout.deployments)
    total = len(rollout.deployments)
    site = db.session.get(Site, rollout.site_id) if rollout.site_id is not None else None
    pool = db.session.get(Pool, rollout.pool_id) if rollout.pool_id is not None else None
    what = f"{site.domain}" if site is not None else f"pool {pool.name if pool else '?'}"
    subject = f"Deployment of {what} failed"
    sentences = {}
    for admin in (False, True):
        parts = [explain.rollout_failure(max(failed, 1), max(total, 1), admin=admin).summary]
        if site is not None:
            parts.append(explain.site_failure(site.last_deploy_error, admin=admin,
                                              refused=site.refused_version is not None).summary)
        sentences[admin] = f"The deployment of {what} failed. " + " ".join(p for p in parts if p)
    notify(DEPLOYMENT_FAILED, f"rollout:{rollout.id}",
           site.owner_id if site is not None else None,
           Notice(DEPLOYMENT_FAILED, subject, sentences[False]),
           Notice(DEPLOYMENT_FAILED, subject, sentences[True]))
