"""Deploying configuration to the fleet: the contract of DESIGN.md's "Deployment".

A node's desired state is the full file set of every site of its pool
(:mod:`.desired_state`).  On the node, the managed directory (``config_dir``) is a
symbolic link to one release directory beside it (``<config_dir>.releases/v<N>-<random>``).
A deployment uploads a new release, swaps the link with one atomic rename, tests,
reloads and verifies (:mod:`.release`, :mod:`.verify`); any failure swaps the link back,
so the previous release, untouched, is live again byte for byte.  A ``config_dir`` that
is still a plain directory (the operator's, before our first deployment) is moved into
the releases directory once and restored as it was if that first deployment fails.

Rendering happens after the node's lease is taken, so of two deployments racing for
a node the one that gets it last carries the newest state of the sites
(:mod:`.batch`).  A fleet costs the database a handful of statements, not a dozen per
node (:mod:`.recorder`).  Every version a node took is kept (:mod:`.history`) and can be
compared with what the node holds (:mod:`.drift`).

This module is the package's only door: other modules import these names, never
the submodules.
"""

from app.services.deployments.desired_state import (
    active_nodes,
    files_digest,
    probe_token,
    ssh_target,
)
from app.services.deployments.drift import check_drift
from app.services.deployments.history import (
    MASKED_KEY,
    current_version,
    diff_versions,
    get_version,
    get_version_number,
    list_versions,
    rollback_summary,
    version_files,
    version_statuses,
)
from app.services.deployments.rollout import (
    deploy_nodes,
    deploy_site,
    get_rollout,
    list_rollouts,
    resume_lost,
    rollback_node,
    rollout_state,
    rollout_to_dict,
    site_rollout_in_flight,
    wait,
)

__all__ = [
    "MASKED_KEY",
    "active_nodes",
    "check_drift",
    "current_version",
    "deploy_nodes",
    "deploy_site",
    "diff_versions",
    "files_digest",
    "get_rollout",
    "get_version",
    "get_version_number",
    "list_rollouts",
    "list_versions",
    "probe_token",
    "resume_lost",
    "rollback_node",
    "rollback_summary",
    "rollout_state",
    "rollout_to_dict",
    "site_rollout_in_flight",
    "ssh_target",
    "version_files",
    "version_statuses",
    "wait",
]
