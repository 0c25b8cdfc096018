"""Which subjects meet each rule's condition now, read from what the collectors wrote:
node metrics and site checks (the latest raw row of each node, and of each site
through each node of its pool), the node health check, the drift check, nameserver
checks and rollouts.

Each kind of observation is read once per evaluation, in one query whatever the
number of nodes or sites, and shared by every rule that needs it.  An observation
older than :data:`FRESH` says nothing: a collector that stopped does not keep an
alert firing (the node's own alerts say why it stopped).

Summaries of site alerts reach the site's owner: they never name a node."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

from sqlalchemy import func, select

from app.extensions import db
from app.models import (
    Alert,
    AlertKind,
    AlertRule,
    AlertState,
    DeploymentStatus,
    NameserverCheck,
    NameserverStatus,
    Node,
    NodeMetric,
    Pool,
    Rollout,
    Site,
    SiteCheck,
    SubjectKind,
)
from app.models.base import as_utc

#: How old the newest metric or site check may be and still count.
FRESH = timedelta(minutes=15)
#: Rollouts created this long before an evaluation are read again by it (see
#: :attr:`Observations.failed_rollouts`).
ROLLOUT_WINDOW = timedelta(days=1)
_FINISHED = (DeploymentStatus.SUCCEEDED, DeploymentStatus.FAILED)


@dataclass(frozen=True)
class Finding:
    """One subject meeting one rule's condition, with where it belongs (so that
    silences and owners' views need no joins) and what it measured."""

    subject_kind: SubjectKind
    subject_id: int
    node_id: int | None
    site_id: int | None
    pool_id: int | None
    value: float | None
    summary: str

    @property
    def key(self) -> tuple[SubjectKind, int]:
        return self.subject_kind, self.subject_id


@dataclass(frozen=True)
class _Node:
    id: int
    name: str
    pool_id: int
    last_check: dict[str, Any] | None
    drifted: bool

    def finding(self, value: float | None, summary: str) -> Finding:
        return Finding(SubjectKind.NODE, self.id, self.id, None, self.pool_id, value, summary)

    def check_ok(self, part: str) -> bool | None:
        """The last health check's verdict on ``part`` (None: not checked)."""
        outcome = (self.last_check or {}).get(part)
        return outcome.get("ok") if isinstance(outcome, dict) else None


@dataclass(frozen=True)
class _Site:
    id: int
    domain: str
    pool_id: int

    def finding(self, value: float | None, summary: str) -> Finding:
        return Finding(SubjectKind.SITE, self.id, None, self.id, self.pool_id, value, summary)


@dataclass(frozen=True)
class _Check:
    site: _Site
    node_id: int
    failed: bool
    status_code: int | None
    cert_not_after: datetime | None
    cert_matches: bool | None


class Observations:
    """What the collectors last wrote, read lazily and once."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    @cached_property
    def nodes(self) -> dict[int, _Node]:
        """Enabled nodes: a disabled node raises nothing."""
        rows = db.session.execute(select(Node.id, Node.name, Node.pool_id, Node.last_check,
                                         Node.drifted).where(Node.enabled.is_(True)))
        return {row.id: _Node(row.id, row.name, row.pool_id, row.last_check, row.drifted)
                for row in rows}

    @cached_property
    def metrics(self) -> dict[int, NodeMetric]:
        """Each enabled node's newest fresh raw sample."""
        newest = (select(func.max(NodeMetric.id))
                  .where(NodeMetric.period == 0, NodeMetric.at >= self.now - FRESH)
                  .group_by(NodeMetric.node_id))
        samples = db.session.scalars(select(NodeMetric).where(NodeMetric.id.in_(newest)))
        return {sample.node_id: sample for sample in samples if sample.node_id in self.nodes}

    @cached_property
    def checks(self) -> dict[int, list[_Check]]:
        """Each site's newest fresh raw check through each enabled node of its pool.
        A newest row that counts no check (the node was out of reach over SSH, so the
        site was not asked through it) leaves that node out: it says nothing of the
        site, and the node's own alerts tell of the node."""
        newest = (select(func.max(SiteCheck.id))
                  .where(SiteCheck.period == 0, SiteCheck.at >= self.now - FRESH)
                  .group_by(SiteCheck.site_id, SiteCheck.node_id))
        rows = db.session.execute(
            select(SiteCheck.node_id, SiteCheck.failures, SiteCheck.status_code,
                   SiteCheck.cert_not_after, SiteCheck.cert_matches,
                   Site.id.label("site_id"), Site.domain, Site.pool_id)
            .join(Site, Site.id == SiteCheck.site_id)
            .join(Node, Node.id == SiteCheck.node_id)
            .where(SiteCheck.id.in_(newest), SiteCheck.checks > 0, Node.enabled.is_(True),
                   Node.pool_id == Site.pool_id))
        by_site: dict[int, list[_Check]] = {}
        for row in rows:
            site = _Site(row.site_id, row.domain, row.pool_id)
            by_site.setdefault(site.id, []).append(_Check(
                site, row.node_id, row.failures > 0, row.status_code,
                as_utc(row.cert_not_after) if row.cert_not_after else None, row.cert_matches))
        return by_site

    @cached_property
    def failed_rollouts(self) -> list[tuple[int, _Site | None, int | None, str]]:
        """(rollout id, site, pool id, pool name) of each site, and each pool's own
        rollouts (without a site), whose latest finished rollout failed.

        Read without going through the whole history, whose length would otherwise
        set the cost of every evaluation: the rollouts created within
        :data:`ROLLOUT_WINDOW` (a failure is seen by the first evaluation after it
        ends, so the window need only outlast a stopped scheduler), and the rollouts
        of the subjects a deployment-failed alert is open for, whose failure stays
        the latest until a later rollout of theirs finishes, however old it is."""
        recent = Rollout.created_at >= self.now - ROLLOUT_WINDOW
        found = _failed_latest([recent], [recent])
        # Each open alert's value is its failed rollout: nothing older can be the latest.
        alerted: dict[SubjectKind, dict[int, int]] = {SubjectKind.SITE: {},
                                                      SubjectKind.POOL: {}}
        for kind, subject_id, value in db.session.execute(
                select(Alert.subject_kind, Alert.subject_id, Alert.value)
                .join(AlertRule, AlertRule.id == Alert.rule_id)
                .where(Alert.state != AlertState.RESOLVED,
                       AlertRule.kind == AlertKind.DEPLOYMENT_FAILED)):
            alerted.setdefault(kind, {})[subject_id] = int(value or 0)

        def since_failure(column: Any, failed: dict[int, int]) -> list[Any] | None:
            return [column.in_(failed), Rollout.id >= min(failed.values())] if failed else None

        sites, pools = alerted[SubjectKind.SITE], alerted[SubjectKind.POOL]
        if sites or pools:
            # The same rollout when it is also among the recent ones: a subject's
            # latest finished rollout is its latest in the window, if it has one there.
            found += _failed_latest(since_failure(Rollout.site_id, sites),
                                    since_failure(Rollout.pool_id, pools))
        by_subject = {(site.id if site else None, pool_id): (rollout_id, site, pool_id, name)
                      for rollout_id, site, pool_id, name in found}
        return sorted(by_subject.values(), key=lambda failed: failed[0])

    @cached_property
    def nameserver_mismatches(self) -> dict[int, tuple[_Site, list[str]]]:
        """Each site with names whose NS records are not the expected ones."""
        by_site: dict[int, tuple[_Site, list[str]]] = {}
        for row in db.session.execute(
                select(NameserverCheck.hostname, Site.id, Site.domain, Site.pool_id)
                .join(Site, Site.id == NameserverCheck.site_id)
                .where(NameserverCheck.status == NameserverStatus.MISMATCH)
                .order_by(NameserverCheck.hostname)):
            site = _Site(row.id, row.domain, row.pool_id)
            by_site.setdefault(site.id, (site, []))[1].append(row.hostname)
        return by_site


def _failed_latest(site_conditions: list[Any] | None, pool_conditions: list[Any] | None
                   ) -> list[tuple[int, _Site | None, int | None, str]]:
    """:attr:`Observations.failed_rollouts` among the rollouts of sites meeting
    ``site_conditions``, and of pools (rollouts without a site) meeting
    ``pool_conditions`` (None: none of them)."""
    finished = Rollout.status.in_(_FINISHED)
    found: list[tuple[int, _Site | None, int | None, str]] = []
    if site_conditions is not None:
        latest = (select(func.max(Rollout.id))
                  .where(Rollout.site_id.is_not(None), finished, *site_conditions)
                  .group_by(Rollout.site_id))
        for row in db.session.execute(
                select(Rollout.id, Site.id.label("site_id"), Site.domain, Site.pool_id)
                .join(Site, Site.id == Rollout.site_id)
                .where(Rollout.id.in_(latest), Rollout.status == DeploymentStatus.FAILED)):
            found.append((row.id, _Site(row.site_id, row.domain, row.pool_id), row.pool_id, ""))
    if pool_conditions is not None:
        latest = (select(func.max(Rollout.id))
                  .where(Rollout.site_id.is_(None), Rollout.pool_id.is_not(None), finished,
                         *pool_conditions)
                  .group_by(Rollout.pool_id))
        for rollout_id, pool_id, name in db.session.execute(
                select(Rollout.id, Pool.id, Pool.name).join(Pool, Pool.id == Rollout.pool_id)
                .where(Rollout.id.in_(latest), Rollout.status == DeploymentStatus.FAILED)):
            found.append((rollout_id, None, pool_id, name))
    return found


# ----------------------------------------------------------------------------- finders

def find(rule: AlertRule, seen: Observations) -> list[Finding]:
    """The subjects meeting ``rule`` now, within its pool if it has one."""
    found = FINDERS[rule.kind](rule, seen)
    if rule.pool_id is not None:
        found = [finding for finding in found if finding.pool_id == rule.pool_id]
    return found


def _metric(column: str, label: str, unit: str) -> Callable[[AlertRule, Observations],
                                                             list[Finding]]:
    def finder(rule: AlertRule, seen: Observations) -> list[Finding]:
        limit = rule.threshold or 0.0
        found = []
        for node_id, sample in seen.metrics.items():
            value = getattr(sample, column)
            if value is None or value <= limit:
                continue
            node = seen.nodes[node_id]
            where = _fullest_mount(sample) if column == "disk_percent" else ""
            found.append(node.finding(value, f"{node.name}: {label}{where} {value:.1f}{unit} "
                                             f"(above {limit:g}{unit})"))
        return found

    return finder


def _fullest_mount(sample: NodeMetric) -> str:
    systems = [fs for fs in sample.filesystems or []
               if isinstance(fs, dict) and isinstance(fs.get("percent"), int | float)]
    if not systems:
        return ""
    fullest = max(systems, key=lambda fs: fs["percent"])
    return f" of {fullest.get('mount', '?')}"


def _unreachable(rule: AlertRule, seen: Observations) -> list[Finding]:
    return [node.finding(None, f"{node.name} does not answer over SSH")
            for node in seen.nodes.values() if node.check_ok("ssh") is False]


def _proxy_down(rule: AlertRule, seen: Observations) -> list[Finding]:
    """Reachable over SSH, and the proxy process is gone, HTTP does not answer, or
    no site checked through the node got any answer."""
    silent: Counter[int] = Counter()
    checked: Counter[int] = Counter()
    for checks in seen.checks.values():
        for check in checks:
            checked[check.node_id] += 1
            silent[check.node_id] += check.failed and check.status_code is None
    found = []
    for node in seen.nodes.values():
        if node.check_ok("ssh") is False:
            continue  # unreachable, which its own kind says
        reasons = []
        if node.check_ok("service") is False:
            reasons.append("its proxy process is not running")
        if node.check_ok("http") is False:
            reasons.append("it does not answer HTTP")
        if checked[node.id] and silent[node.id] == checked[node.id]:
            reasons.append(f"none of the {checked[node.id]} site(s) checked through it "
                           "got an answer")
        if reasons:
            found.append(node.finding(None, f"{node.name}: {'; '.join(reasons)}"))
    return found


def _site_down(rule: AlertRule, seen: Observations) -> list[Finding]:
    wanted = int(rule.threshold or 1)
    found = []
    for checks in seen.checks.values():
        failed = [check for check in checks if check.failed]
        if not failed or len(failed) < min(wanted, len(checks)):
            continue
        codes = Counter(f"HTTP {c.status_code}" if c.status_code else "no answer"
                        for c in failed)
        site = checks[0].site
        found.append(site.finding(len(failed), (
            f"{site.domain} fails its checks through {len(failed)} of {len(checks)} "
            f"node(s) ({', '.join(code for code, _ in codes.most_common(3))})")))
    return found


def _cert_expiring(rule: AlertRule, seen: Observations) -> list[Finding]:
    window = timedelta(days=rule.threshold or 0)
    found = []
    for checks in seen.checks.values():
        served = [c.cert_not_after for c in checks if c.cert_not_after is not None]
        if not served or min(served) - seen.now >= window:
            continue
        soonest = min(served)
        days = (soonest - seen.now).total_seconds() / 86400
        site = checks[0].site
        when = soonest.strftime("%Y-%m-%d %H:%M UTC")
        found.append(site.finding(round(days, 1), (
            f"the certificate served for {site.domain} expired on {when}" if days < 0 else
            f"the certificate served for {site.domain} expires on {when}, in {days:.1f} "
            "day(s)")))
    return found


def _cert_mismatch(rule: AlertRule, seen: Observations) -> list[Finding]:
    found = []
    for checks in seen.checks.values():
        compared = [c for c in checks if c.cert_matches is not None]
        other = [c for c in compared if c.cert_matches is False]
        if other:
            site = checks[0].site
            found.append(site.finding(len(other), (
                f"{len(other)} of {len(compared)} node(s) serve {site.domain} a certificate "
                "other than the one issued for it")))
    return found


def _deployment_failed(rule: AlertRule, seen: Observations) -> list[Finding]:
    found = []
    for rollout_id, site, pool_id, pool_name in seen.failed_rollouts:
        if site is not None:
            found.append(site.finding(rollout_id, f"the latest deployment of {site.domain} "
                                                  f"(#{rollout_id}) failed"))
        elif pool_id is not None:
            found.append(Finding(SubjectKind.POOL, pool_id, None, None, pool_id, rollout_id,
                                 f"the latest deployment to pool {pool_name} "
                                 f"(#{rollout_id}) failed"))
    return found


def _drift(rule: AlertRule, seen: Observations) -> list[Finding]:
    return [node.finding(None, f"files on {node.name} differ from its deployed version")
            for node in seen.nodes.values() if node.drifted]


def _ns_mismatch(rule: AlertRule, seen: Observations) -> list[Finding]:
    found = []
    for site, names in seen.nameserver_mismatches.values():
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        found.append(site.finding(len(names), f"the NS records of {shown} are not the "
                                              "expected nameservers"))
    return found


FINDERS: dict[AlertKind, Callable[[AlertRule, Observations], list[Finding]]] = {
    AlertKind.CPU: _metric("cpu_percent", "CPU use", "%"),
    AlertKind.MEMORY: _metric("mem_percent", "memory use", "%"),
    AlertKind.DISK: _metric("disk_percent", "disk use", "%"),
    AlertKind.LOAD: _metric("load1", "load average", ""),
    AlertKind.NODE_UNREACHABLE: _unreachable,
    AlertKind.PROXY_DOWN: _proxy_down,
    AlertKind.SITE_DOWN: _site_down,
    AlertKind.CERT_EXPIRING: _cert_expiring,
    AlertKind.CERT_MISMATCH: _cert_mismatch,
    AlertKind.DEPLOYMENT_FAILED: _deployment_failed,
    AlertKind.DRIFT: _drift,
    AlertKind.NS_MISMATCH: _ns_mismatch,
}
