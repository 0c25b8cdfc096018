"""Failures in words: what a node, a deployment or a certificate attempt reported,
turned into one sentence that says what happened and what to do.

Administrators get the node's name and the raw text beside the sentence; clients get
what it means for their site and never the fleet's names, addresses, ports or paths.
Pure functions: text in, text out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Explanation:
    """``summary`` is for the person in front of the page; ``detail`` is the raw text,
    empty for clients."""

    summary: str
    detail: str


# (pattern on the raw text, sentence for administrators, sentence for clients); the
# first match wins. ``{node}`` is the node's name (administrators only).
_UNREACHABLE_CLIENT = ("A proxy node of your pool could not be reached, so it keeps its "
                       "previous configuration; the administrators can see why.")
_RELOAD_CLIENT = ("The proxy could not load the new configuration, so the previous one was "
                  "put back; an administrator can see why.")
_NODE_RULES: list[tuple[re.Pattern[str], str, str]] = [
    (re.compile(r"HostKeyChanged|host key", re.I),
     "Node {node} presents a new SSH host key: compare its fingerprint on the node's page "
     "and accept it only if the server was reinstalled.",
     "A proxy node of your pool needs an administrator's attention, so it keeps its "
     "previous configuration."),
    (re.compile(r"AuthenticationFailed|refused the credentials", re.I),
     "Node {node} refused the SSH credentials: check the key or password in its settings.",
     _UNREACHABLE_CLIENT),
    (re.compile(r"connection refused", re.I),
     "SSH connection to node {node} refused: is sshd running and the port open?",
     _UNREACHABLE_CLIENT),
    (re.compile(r"does not resolve|name or service not known|getaddrinfo", re.I),
     "The host name of node {node} does not resolve: check its host setting.",
     _UNREACHABLE_CLIENT),
    (re.compile(r"no route to host|network is unreachable|unreachable", re.I),
     "Node {node} could not be reached over SSH: is it up, and is the network to it open?",
     _UNREACHABLE_CLIENT),
    (re.compile(r"timed out|timeout|did not finish within|no key exchange|"
                r"no answer within", re.I),
     "Node {node} did not answer in time: is it overloaded, or is the network to it "
     "slow or down?",
     "A proxy node of your pool did not answer in time, so it keeps its previous "
     "configuration; the next deployment tries again."),
    (re.compile(r"too many open files", re.I),
     "Node {node}'s proxy ran out of file descriptors: each site opens its own access and "
     "error log, so a node with N sites needs more than 2N. Raise worker_rlimit_nofile in "
     "nginx.conf and the service's LimitNOFILE (systemd), then deploy again.",
     "A proxy node of your pool reached a system limit, so it keeps its previous "
     "configuration; the administrators can see why."),
    # pkill prints nothing when no process matches: only its status says so.
    (re.compile(r"reload failed \(\S*pkill [^)]*\): exit status 1$"),
     "Node {node}'s reload command found no nginx process with the PID its pid file "
     "names: is nginx running, and is that the file the pid directive of its nginx.conf "
     "names? The previous configuration was put back.",
     _RELOAD_CLIENT),
    (re.compile(r"lease|another deployment", re.I),
     "Another deployment to node {node} was still running; this one waited and gave up. "
     "Deploy again once it has finished.",
     "Another deployment to your pool was still running; deploy again in a moment."),
]
_STEP_RULES: dict[str, tuple[str, str]] = {
    "test": ("Node {node} refused the new configuration (its test command failed), so the "
             "previous configuration stays live: the detail names the file and line.",
             "The proxy refused the new configuration, so the previous one stays live. "
             "Check your site's settings (a backend name the proxy cannot resolve, for "
             "instance); if they look right, ask an administrator."),
    "reload": ("Node {node} failed to reload its proxy with the new configuration; the "
               "previous configuration was put back.",
               _RELOAD_CLIENT),
    "verify": ("After the reload, a site on node {node} did not answer correctly, so the "
               "previous configuration was put back: is its backend up?",
               "Your site did not answer correctly after the change (is its backend up?), "
               "so the previous configuration was put back."),
    "upload": ("The new files could not be written to node {node} (disk full, or a "
               "directory that is not ours?); nothing changed there.",
               "The change could not be written to a proxy node of your pool; nothing "
               "changed there and an administrator can see why."),
}


def node_failure(error: str, node: str, *, step: str = "", admin: bool) -> Explanation:
    """A node deployment's or a node check's failure, as a sentence.

    :param error: the raw text the node deployment recorded (``"step: message"``).
    :param node: the node's name, shown to administrators only.
    """
    if not error:
        return Explanation("", "")
    step = step or error.split(":", 1)[0].strip()
    if step == "set aside":
        # The owner's sentence follows the step: it names nothing of the fleet.
        return _pick("Node {node} refused this site's new version and took the rest of the "
                     "pool with the site's previous version: the detail says why.",
                     error.partition(": ")[2], node, error, admin)
    for pattern, for_admin, for_client in _NODE_RULES:
        if pattern.search(error):
            return _pick(for_admin, for_client, node, error, admin)
    if step in _STEP_RULES:
        for_admin, for_client = _STEP_RULES[step]
        return _pick(for_admin, for_client, node, error, admin)
    return _pick("The deployment to node {node} failed; its previous configuration stays "
                 "live: the detail says why.",
                 "The change could not be deployed to a proxy node of your pool; it keeps "
                 "its previous configuration and an administrator can see why.",
                 node, error, admin)


_CHECK_SENTENCES = {
    "service": "The proxy process is not running on node {node}: start it, or use Prepare "
               "to install and configure it.",
    "http": "Node {node} does not answer HTTP on its listen address and port: is the proxy "
            "running with our configuration (deploy once), and is the port open?",
}


def check_failure(part: str, detail: str, node: str) -> Explanation:
    """One failed part of a node check (``ssh``, ``service`` or ``http``), for the
    administrators who run checks."""
    if part == "ssh":
        return node_failure(detail, node, admin=True)
    if part in _CHECK_SENTENCES and not detail.startswith("not checked"):
        return Explanation(_CHECK_SENTENCES[part].format(node=node), detail)
    return Explanation(detail, "")


def site_failure(error: str, *, admin: bool, refused: bool = False) -> Explanation:
    """A site's last deployment error, recorded as ``"node: step: message"`` for each
    node that failed; the first one speaks for them all.  A version a node refused
    (``refused``) carries its owner's sentence already, free of the fleet's names;
    administrators find what the node printed in the audit log."""
    if not error:
        return Explanation("", "")
    if refused:
        return Explanation(error, "")
    node, _, rest = error.partition(": ")
    told = node_failure(rest.split("; ")[0] or error, node, admin=admin)
    return Explanation(told.summary, error if admin else "")


def rollout_failure(failed: int, total: int, *, admin: bool, error: str = "") -> Explanation:
    """A whole rollout's outcome when some of its nodes failed."""
    if not failed:
        return Explanation("", "")
    which = "the node" if total == 1 else f"{failed} of {total} nodes"
    summary = (f"The deployment failed on {which}; each of them keeps its previous "
               "configuration.")
    return Explanation(summary, error if admin else "")


def _pick(for_admin: str, for_client: str, node: str, error: str,
          admin: bool) -> Explanation:
    if admin:
        return Explanation(for_admin.format(node=node), error)
    return Explanation(for_client, "")
