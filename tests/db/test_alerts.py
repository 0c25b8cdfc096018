"""The alert state machine, fed with rows written through the same models the
collectors write (node metrics, site checks, the node health check's result, drift,
nameserver checks, rollouts), with the evaluation's clock given explicitly.

Notices go through real channels on loopback: a Telegram Bot API stand-in, an SMTP
server and a webhook receiver; every notice is searched for IP addresses and
unmasked names."""

from __future__ import annotations

import random
import threading
from datetime import datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, insert, select

from app.errors import Conflict, Forbidden, NotFound
from app.models import (
    Alert,
    AlertState,
    AlertTransition,
    DeploymentStatus,
    NameserverCheck,
    NameserverStatus,
    Node,
    NodeMetric,
    NotificationDelivery,
    Pool,
    Rollout,
    RolloutKind,
    Site,
    SiteCheck,
    SubjectKind,
    User,
)
from app.models.base import as_utc, utcnow
from app.services import alerts, notifiers
from app.services.alerts import evaluation
from app.services.notifiers import ChannelInput
from tests import factories
from tests.notice_servers import IP, FakeTelegram, WebhookReceiver, notice_fixtures
from tests.smtp import SmtpServer

TOKEN = "654321:" + "T" * 35
SECRET = "w" * 24
DOMAIN = "shop.example.com"
T0 = datetime(2027, 3, 1, 12, 0, tzinfo=utcnow().tzinfo)
MINUTE = timedelta(minutes=1)


telegram, receiver, smtp, outside = notice_fixtures(
    ("127.0.0.91", "127.0.0.92", "127.0.0.93"), token=TOKEN, secret=SECRET)


@pytest.fixture()
def heard(db: Any, admin: User, alice: User, receiver: WebhookReceiver) -> dict[str, int]:
    """A channel for the administrator (Telegram) and one for Alice (e-mail); their ids."""
    return {
        "admin": notifiers.create_channel(admin, ChannelInput(
            name="ops", kind="telegram", target="77", secret=TOKEN)).id,
        "alice": notifiers.create_channel(alice, ChannelInput(
            name="mail", kind="email", target="alice@mail.test")).id,
    }


def run(db: Any, at: datetime) -> str:
    """One evaluation at ``at``, waiting for the notices it sent."""
    summary = alerts.evaluate(at)
    for delivery_id in db.session.scalars(select(NotificationDelivery.id)):
        notifiers.wait(delivery_id)
    db.session.expire_all()
    return summary


def rule(admin: User, kind: str, threshold: float | None = None, **extra: Any) -> int:
    data = {"name": f"{kind} rule", "kind": kind, "threshold": threshold, **extra}
    return alerts.create_rule(admin, data).id


def notices(db: Any, channel_id: int | None = None) -> list[str]:
    """The events of the deliveries (to one channel), in order."""
    stmt = select(NotificationDelivery.event).order_by(NotificationDelivery.id)
    if channel_id is not None:
        stmt = stmt.where(NotificationDelivery.channel_id == channel_id)
    return list(db.session.scalars(stmt))


def only_alert(db: Any) -> Alert:
    [alert] = db.session.scalars(select(Alert)).all()
    return alert


def moves(db: Any, alert: Alert) -> list[tuple[str | None, str, bool, bool]]:
    """(from, to, silenced, notified) of each transition of ``alert``."""
    rows = db.session.scalars(select(AlertTransition).where(AlertTransition.alert_id == alert.id)
                              .order_by(AlertTransition.id))
    return [(t.from_state, t.to_state, t.silenced, t.notified_at is not None) for t in rows]


def metric(db: Any, node: Node, at: datetime, **values: Any) -> None:
    db.session.add(NodeMetric(node_id=node.id, period=0, at=at, **values))
    db.session.commit()


def check(db: Any, site: Site, node: Node, at: datetime, *, failed: bool = False,
          status: int | None = 200, checks: int = 1, **values: Any) -> None:
    db.session.add(SiteCheck(site_id=site.id, node_id=node.id, period=0, at=at, checks=checks,
                             failures=int(failed), status_code=status, **values))
    db.session.commit()


def health(db: Any, node: Node, *, ssh: bool = True, service: bool = True,
           http: bool = True) -> None:
    """What the node health job records on the node."""
    node = db.session.get(Node, node.id)
    node.last_check = {"ssh": {"ok": ssh, "detail": ""}, "service": {"ok": service, "detail": ""},
                       "http": {"ok": http, "detail": ""}}
    node.last_check_at = utcnow()
    db.session.commit()


def rollout(db: Any, site: Site | None, status: DeploymentStatus, pool_id: int = 1,
            at: datetime = T0) -> Rollout:
    """A rollout of the site (or of the pool, without a site) created at ``at``."""
    row = Rollout(kind=RolloutKind.DEPLOY, site_id=site.id if site else None,
                  owner_id=site.owner_id if site else None, pool_id=pool_id, status=status,
                  created_at=at)
    db.session.add(row)
    db.session.commit()
    return row


def assert_masked(text: str) -> None:
    assert not IP.search(text), text
    assert "example" not in text and "shop" not in text, text


# ----------------------------------------------------------------------------- the states


def test_a_condition_fires_after_its_duration_once_and_recovers_with_one_notice(
        db: Any, admin: User, heard: dict[str, int]) -> None:
    node = factories.make_node("edge-1")
    rule(admin, "cpu", 90, duration_seconds=300)
    metric(db, node, T0, cpu_percent=97.0)
    run(db, T0)
    alert = only_alert(db)
    assert (alert.state, alert.value) == (AlertState.PENDING, 97.0)
    assert notices(db) == []

    metric(db, node, T0 + 2 * MINUTE, cpu_percent=95.0)
    run(db, T0 + 2 * MINUTE)
    assert only_alert(db).state == AlertState.PENDING and notices(db) == []

    for _ in range(2):  # a second evaluation at the same moment changes nothing
        run(db, T0 + 5 * MINUTE)
    alert = only_alert(db)
    assert alert.state == AlertState.FIRING and alert.value == 95.0
    assert notices(db, heard["admin"]) == ["alert.firing"]
    assert notices(db, heard["alice"]) == []  # a node's alerts are the administrators'

    run(db, T0 + 6 * MINUTE)
    metric(db, node, T0 + 7 * MINUTE, cpu_percent=40.0)
    run(db, T0 + 7 * MINUTE)
    run(db, T0 + 8 * MINUTE)
    alert = only_alert(db)
    assert alert.state == AlertState.RESOLVED and alert.resolved_at is not None
    assert notices(db, heard["admin"]) == ["alert.firing", "alert.resolved"]
    assert moves(db, alert) == [(None, "pending", False, False),
                                ("pending", "firing", False, True),
                                ("firing", "resolved", False, True)]

    # The condition again: a new alert, with its own notices.
    metric(db, node, T0 + 9 * MINUTE, cpu_percent=99.0)
    run(db, T0 + 9 * MINUTE)
    assert db.session.scalar(select(func.count(Alert.id))) == 2


def test_a_pending_alert_whose_condition_stops_is_resolved_without_a_notice(
        db: Any, admin: User, heard: dict[str, int]) -> None:
    node = factories.make_node("edge-1")
    rule(admin, "memory", 80, duration_seconds=600)
    metric(db, node, T0, mem_percent=85.0)
    run(db, T0)
    metric(db, node, T0 + 5 * MINUTE, mem_percent=60.0)
    run(db, T0 + 5 * MINUTE)
    run(db, T0 + 20 * MINUTE)
    alert = only_alert(db)
    assert alert.state == AlertState.RESOLVED and alert.fired_at is None
    assert moves(db, alert) == [(None, "pending", False, False),
                                ("pending", "resolved", False, False)]
    assert notices(db) == []


def test_a_firing_alert_reminds_every_interval_until_acknowledged(
        db: Any, admin: User, heard: dict[str, int], telegram: FakeTelegram) -> None:
    node = factories.make_node("edge-1")
    rule(admin, "node_unreachable", renotify_seconds=600)
    health(db, node, ssh=False, service=False)
    run(db, T0)
    assert only_alert(db).state == AlertState.FIRING  # no duration: fires at once
    run(db, T0 + 5 * MINUTE)
    assert notices(db) == ["alert.firing"]
    run(db, T0 + 10 * MINUTE)
    run(db, T0 + 11 * MINUTE)
    assert notices(db) == ["alert.firing", "alert.firing"]
    assert "still firing" in telegram.texts()[-1]

    alerts.acknowledge(admin, only_alert(db).id)
    run(db, T0 + 30 * MINUTE)
    assert notices(db) == ["alert.firing", "alert.firing"]
    health(db, node)
    run(db, T0 + 31 * MINUTE)
    assert notices(db) == ["alert.firing", "alert.firing", "alert.resolved"]
    assert moves(db, only_alert(db)) == [(None, "firing", False, True),
                                         ("firing", "firing", False, True),
                                         ("firing", "resolved", False, True)]


def test_acknowledging_is_refused_once_resolved_and_kept_when_repeated(
        db: Any, admin: User, heard: dict[str, int]) -> None:
    node = factories.make_node("edge-1")
    rule(admin, "drift")
    db.session.get(Node, node.id).drifted = True
    db.session.commit()
    run(db, T0)
    alert = alerts.acknowledge(admin, only_alert(db).id)
    first = alert.acknowledged_at
    assert alerts.acknowledge(admin, alert.id).acknowledged_at == first
    db.session.get(Node, node.id).drifted = False
    db.session.commit()
    run(db, T0 + MINUTE)
    with pytest.raises(Conflict):
        alerts.acknowledge(admin, alert.id)
    # The resolution of an acknowledged alert is still told.
    assert notices(db, heard["admin"]) == ["alert.firing", "alert.resolved"]


# ----------------------------------------------------------------------------- silences


def test_a_silence_holds_notices_and_sends_what_still_fires_when_it_ends(
        db: Any, admin: User, heard: dict[str, int], telegram: FakeTelegram) -> None:
    quiet, loud = factories.make_node("edge-1"), factories.make_node("edge-2")
    rule(admin, "node_unreachable")
    rule(admin, "drift")
    # Drift on edge-1 fired and was told before the maintenance.
    db.session.get(Node, quiet.id).drifted = True
    db.session.commit()
    run(db, T0)
    assert notices(db) == ["alert.firing"]

    window = alerts.create_silence(admin, {"node": "edge-1", "starts_at": T0 + MINUTE,
                                           "ends_at": T0 + 60 * MINUTE,
                                           "reason": "kernel upgrade"})
    assert window.node_id == quiet.id
    # During the window edge-1 goes down, and its drift is repaired: nothing is sent.
    health(db, quiet, ssh=False, service=False)
    run(db, T0 + 2 * MINUTE)
    db.session.get(Node, quiet.id).drifted = False
    db.session.commit()
    run(db, T0 + 3 * MINUTE)
    # An unsilenced node still speaks.
    health(db, loud, ssh=False, service=False)
    run(db, T0 + 4 * MINUTE)
    assert notices(db) == ["alert.firing", "alert.firing"]
    down = db.session.scalar(select(Alert).where(Alert.node_id == quiet.id,
                                                 Alert.state == AlertState.FIRING))
    assert moves(db, down) == [(None, "firing", True, False)]

    run(db, T0 + 61 * MINUTE)  # the window is over
    assert notices(db) == ["alert.firing", "alert.firing", "alert.firing", "alert.resolved"]
    assert moves(db, down) == [(None, "firing", True, True)]
    released = telegram.texts()[-2:]
    assert any("maintenance window" in text for text in released)
    assert any("[RESOLVED]" in text and "drift" in text for text in released)
    run(db, T0 + 62 * MINUTE)
    assert len(notices(db)) == 4


def test_what_fires_and_recovers_inside_a_silence_sends_nothing(
        db: Any, admin: User, heard: dict[str, int]) -> None:
    node = factories.make_node("edge-1")
    rule(admin, "node_unreachable")
    silence = alerts.create_silence(admin, {"pool": "default", "starts_at": T0,
                                            "ends_at": T0 + 60 * MINUTE})
    health(db, node, ssh=False, service=False)
    run(db, T0)
    health(db, node)
    run(db, T0 + 10 * MINUTE)
    alerts.end_silence(admin, silence.id)
    run(db, T0 + 70 * MINUTE)
    assert notices(db) == []
    assert moves(db, only_alert(db)) == [(None, "firing", True, False),
                                         ("firing", "resolved", False, False)]


def test_ending_a_silence_early_sends_the_held_notice_at_the_next_evaluation(
        db: Any, admin: User, alice: User, heard: dict[str, int]) -> None:
    site = factories.make_site(alice, DOMAIN)
    rule(admin, "deployment_failed")
    silence = alerts.create_silence(admin, {"site": DOMAIN,
                                            "ends_at": utcnow() + timedelta(hours=2)})
    now = utcnow()
    rollout(db, site, DeploymentStatus.FAILED, at=now)
    run(db, now)
    assert notices(db) == []
    ended = alerts.end_silence(admin, silence.id)
    assert as_utc(ended.ends_at) <= utcnow()
    with pytest.raises(Conflict):
        alerts.end_silence(admin, silence.id)
    run(db, utcnow())
    assert notices(db, heard["alice"]) == ["alert.firing"]
    assert notices(db, heard["admin"]) == ["alert.firing"]


# ----------------------------------------------------------------------------- overlaps


def _overlapping(app: Flask, monkeypatch: pytest.MonkeyPatch, step: str, at: datetime) -> None:
    """Make the evaluation's first ``step`` wait until a whole other evaluation (in its
    own thread, session and transaction) has run and committed."""
    original = getattr(evaluation._Round, step)
    started: list[bool] = []
    done: list[str] = []

    def other() -> None:
        with app.app_context():
            try:
                done.append(alerts.evaluate(at))
            finally:
                evaluation.db.session.remove()

    def late(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not started:  # the first evaluation's first step; the other one runs plainly
            started.append(True)
            thread = threading.Thread(target=other)
            thread.start()
            thread.join(30)
            assert done, "the other evaluation did not finish"
        return original(self, *args, **kwargs)

    monkeypatch.setattr(evaluation._Round, step, late)


def test_overlapping_evaluations_open_one_alert_and_notify_once(
        app: Flask, db: Any, admin: User, heard: dict[str, int],
        monkeypatch: pytest.MonkeyPatch) -> None:
    node = factories.make_node("edge-1")
    rule(admin, "node_unreachable")
    health(db, node, ssh=False, service=False)
    _overlapping(app, monkeypatch, "open", T0)
    run(db, T0)
    assert db.session.scalar(select(func.count(Alert.id))) == 1
    assert moves(db, only_alert(db)) == [(None, "firing", False, True)]
    assert notices(db) == ["alert.firing"]


def test_overlapping_evaluations_fire_a_pending_alert_once(
        app: Flask, db: Any, admin: User, heard: dict[str, int],
        monkeypatch: pytest.MonkeyPatch) -> None:
    node = factories.make_node("edge-1")
    rule(admin, "disk", 90, duration_seconds=120)
    metric(db, node, T0, disk_percent=97.0)
    run(db, T0)
    metric(db, node, T0 + 2 * MINUTE, disk_percent=97.0)
    _overlapping(app, monkeypatch, "fire", T0 + 2 * MINUTE)
    run(db, T0 + 2 * MINUTE)
    assert moves(db, only_alert(db)) == [(None, "pending", False, False),
                                         ("pending", "firing", False, True)]
    assert notices(db) == ["alert.firing"]


# ----------------------------------------------------------------------------- each kind


def test_site_down_counts_the_nodes_of_its_pool_that_fail(
        db: Any, admin: User, alice: User, heard: dict[str, int]) -> None:
    site = factories.make_site(alice, DOMAIN)
    edges = [factories.make_node(f"edge-{n}") for n in range(3)]
    other_pool = factories.make_node("elsewhere", pool=nodes_pool(admin, "other"))
    rule(admin, "site_down", 2)
    check(db, site, edges[0], T0, failed=True, status=502)
    check(db, site, edges[1], T0)
    check(db, site, edges[2], T0)
    check(db, site, other_pool, T0, failed=True, status=None)  # not its pool: ignored
    run(db, T0)
    assert db.session.scalar(select(Alert)) is None
    check(db, site, edges[1], T0 + MINUTE, failed=True, status=None)
    run(db, T0 + MINUTE)
    alert = only_alert(db)
    assert (alert.subject_kind, alert.site_id, alert.value) == (SubjectKind.SITE, site.id, 2)
    assert alert.summary == f"{DOMAIN} fails its checks through 2 of 3 node(s) (HTTP 502, " \
                            "no answer)"
    assert "edge" not in alert.summary
    # The owner hears of it as well as the administrators.
    assert notices(db, heard["alice"]) == ["alert.firing"]
    # Checks older than FRESH say nothing any more.
    run(db, T0 + MINUTE + alerts.FRESH + MINUTE)
    assert only_alert(db).state == AlertState.RESOLVED


def nodes_pool(admin: User, name: str) -> str:
    from app.services import nodes

    nodes.create_pool(admin, name)
    return name


def test_a_site_down_in_a_pool_of_one_node_fires_whatever_the_threshold(
        db: Any, admin: User, alice: User) -> None:
    site = factories.make_site(alice, DOMAIN)
    node = factories.make_node("edge-1")
    rule(admin, "site_down", 3)
    check(db, site, node, T0, failed=True, status=None)
    run(db, T0)
    assert only_alert(db).summary.endswith("through 1 of 1 node(s) (no answer)")


def test_a_node_out_of_reach_checks_nothing_for_site_down(
        db: Any, admin: User, alice: User) -> None:
    """Rows that count no check (the node could not be reached over SSH) neither fail
    the site nor hold its alert back: only the nodes that checked it count."""
    site = factories.make_site(alice, DOMAIN)
    near, far = factories.make_node("edge-near"), factories.make_node("edge-far")
    rule(admin, "site_down", 2)
    unreachable = {"checks": 0, "status": None, "error": "the node could not be reached "
                                                          "over SSH"}
    check(db, site, near, T0)
    check(db, site, far, T0, **unreachable)
    run(db, T0)
    assert db.session.scalar(select(Alert)) is None
    # The near node fails it: all the nodes that checked it, though fewer than two.
    check(db, site, near, T0 + MINUTE, failed=True, status=502)
    check(db, site, far, T0 + MINUTE, **unreachable)
    run(db, T0 + MINUTE)
    assert only_alert(db).summary == f"{DOMAIN} fails its checks through 1 of 1 node(s) " \
                                     "(HTTP 502)"


@pytest.mark.parametrize("days,fires", [(14, True), (7, True), (1, False)])
def test_a_certificate_expiring_within_the_rules_days_fires(
        db: Any, admin: User, alice: User, days: int, fires: bool) -> None:
    site = factories.make_site(alice, DOMAIN)
    node = factories.make_node("edge-1")
    rule(admin, "cert_expiring", days)
    check(db, site, node, T0, cert_not_after=T0 + timedelta(days=5), cert_matches=True)
    run(db, T0)
    found = db.session.scalar(select(Alert))
    assert (found is not None) == fires
    if fires:
        assert found.value == 5.0 and "expires on 2027-03-06 12:00 UTC, in 5.0 day(s)" in \
            found.summary


def test_a_certificate_other_than_the_issued_one_fires(db: Any, admin: User,
                                                        alice: User) -> None:
    site = factories.make_site(alice, DOMAIN)
    edges = [factories.make_node(f"edge-{n}") for n in range(2)]
    rule(admin, "cert_mismatch")
    check(db, site, edges[0], T0, cert_matches=True)
    check(db, site, edges[1], T0, cert_matches=False)
    run(db, T0)
    assert only_alert(db).summary == (f"1 of 2 node(s) serve {DOMAIN} a certificate other "
                                      "than the one issued for it")


def test_nameservers_not_as_expected_fire_for_the_site(db: Any, admin: User,
                                                        alice: User) -> None:
    site = factories.make_site(alice, DOMAIN)
    rule(admin, "ns_mismatch")
    row = NameserverCheck(site_id=site.id, hostname=DOMAIN, zone="example.com",
                          status=NameserverStatus.MISMATCH, expected=["ns1.example.net"],
                          found=["ns.elsewhere.test"])
    db.session.add(row)
    db.session.commit()
    run(db, T0)
    assert only_alert(db).site_id == site.id
    row.status = NameserverStatus.OK
    db.session.commit()
    run(db, T0 + MINUTE)
    assert only_alert(db).state == AlertState.RESOLVED


def test_a_proxy_that_answers_no_site_check_is_not_answering(db: Any, admin: User,
                                                              alice: User) -> None:
    site, other = factories.make_site(alice, DOMAIN), factories.make_site(alice)
    node = factories.make_node("edge-1")
    health(db, node)
    rule(admin, "proxy_down")
    check(db, site, node, T0, failed=True, status=None)
    check(db, other, node, T0, failed=True, status=502)  # nginx answered: not its fault
    run(db, T0)
    assert db.session.scalar(select(Alert)) is None
    check(db, other, node, T0 + MINUTE, failed=True, status=None)
    run(db, T0 + MINUTE)
    assert only_alert(db).summary == ("edge-1: none of the 2 site(s) checked through it got "
                                      "an answer")
    health(db, node, http=False)
    run(db, T0 + 2 * MINUTE)
    assert only_alert(db).summary.startswith("edge-1: it does not answer HTTP")


def test_a_node_down_is_unreachable_not_a_proxy_down(db: Any, admin: User) -> None:
    node = factories.make_node("edge-1")
    rule(admin, "proxy_down")
    rule(admin, "node_unreachable")
    health(db, node, ssh=False, service=False, http=False)
    run(db, T0)
    assert only_alert(db).rule.kind.value == "node_unreachable"


@pytest.mark.parametrize("kind,column,value,limit", [
    ("disk", "disk_percent", 93.0, 90), ("load", "load1", 12.5, 8), ("cpu", "cpu_percent", 91, 90)])
def test_node_metrics_above_the_threshold_fire(db: Any, admin: User, kind: str, column: str,
                                               value: float, limit: float) -> None:
    node = factories.make_node("edge-1")
    rule(admin, kind, limit)
    metric(db, node, T0 - alerts.FRESH - MINUTE, **{column: value})  # too old to count
    run(db, T0)
    assert db.session.scalar(select(Alert)) is None
    extra = {"filesystems": [{"mount": "/var", "percent": value}]} if kind == "disk" else {}
    metric(db, node, T0, **{column: value}, **extra)
    run(db, T0 + MINUTE)
    alert = only_alert(db)
    assert alert.value == value and alert.summary.startswith("edge-1: ")
    if kind == "disk":
        assert "disk use of /var 93.0%" in alert.summary


def test_a_failed_deployment_fires_until_the_next_one_of_its_site_or_pool_succeeds(
        db: Any, admin: User, alice: User, heard: dict[str, int]) -> None:
    site = factories.make_site(alice, DOMAIN)
    rule(admin, "deployment_failed")
    failed = rollout(db, site, DeploymentStatus.FAILED)
    rollout(db, None, DeploymentStatus.FAILED)  # a pool's own deployment
    rollout(db, site, DeploymentStatus.RUNNING)  # still running: says nothing yet
    run(db, T0)
    by_kind = {a.subject_kind: a for a in db.session.scalars(select(Alert))}
    assert by_kind[SubjectKind.SITE].value == failed.id
    assert by_kind[SubjectKind.POOL].summary.startswith("the latest deployment to pool "
                                                        "default")
    assert notices(db, heard["alice"]) == ["alert.firing"]
    assert notices(db, heard["admin"]) == ["alert.firing", "alert.firing"]
    rollout(db, site, DeploymentStatus.SUCCEEDED)
    run(db, T0 + MINUTE)
    db.session.expire_all()
    assert by_kind[SubjectKind.SITE].state == AlertState.RESOLVED
    assert by_kind[SubjectKind.POOL].state == AlertState.FIRING
    assert notices(db, heard["alice"]) == ["alert.firing", "alert.resolved"]


def _failing(db: Any) -> dict[tuple[SubjectKind, int], int]:
    """The subjects whose latest finished rollout failed, read from the whole history
    in Python: what the evaluation must find, with the failed rollout."""
    latest: dict[tuple[SubjectKind, int], tuple[int, DeploymentStatus]] = {}
    for rollout_id, site_id, pool_id, status in db.session.execute(
            select(Rollout.id, Rollout.site_id, Rollout.pool_id, Rollout.status)
            .order_by(Rollout.id)):
        if status in (DeploymentStatus.SUCCEEDED, DeploymentStatus.FAILED):
            subject = (SubjectKind.SITE, site_id) if site_id else (SubjectKind.POOL, pool_id)
            latest[subject] = (rollout_id, status)
    return {subject: rollout_id for subject, (rollout_id, status) in latest.items()
            if status == DeploymentStatus.FAILED}


def _firing(db: Any) -> dict[tuple[SubjectKind, int], int]:
    return {(a.subject_kind, a.subject_id): int(a.value or 0) for a in db.session.scalars(
        select(Alert).where(Alert.state == AlertState.FIRING))}


def test_a_long_history_of_rollouts_alerts_the_subjects_whose_latest_one_failed(
        db: Any, admin: User, alice: User) -> None:
    """Thousands of rollouts of sites and pools, all statuses: the subjects alerted are
    those whose latest finished rollout failed, as read from the whole history; and
    still, a day later, when the failures are older than the rollouts an evaluation
    reads, until a later rollout of theirs finishes."""
    rule(admin, "deployment_failed")
    nodes_pool(admin, "other")
    pools = sorted(db.session.scalars(select(Pool.id)))
    sites = [factories.make_site(alice, f"s{index}.example.com") for index in range(8)]
    subjects: list[tuple[int | None, int, int | None]] = [
        (site.id, site.pool_id, site.owner_id) for site in sites]
    subjects += [(None, pool_id, None) for pool_id in pools]
    statuses = [DeploymentStatus.SUCCEEDED] * 5 + [DeploymentStatus.FAILED] * 3 + [
        DeploymentStatus.RUNNING, DeploymentStatus.PENDING, DeploymentStatus.ROLLED_BACK,
        DeploymentStatus.SKIPPED]
    chance = random.Random(20270301)
    count = 3000
    db.session.execute(insert(Rollout), [
        {"kind": RolloutKind.DEPLOY, "site_id": site_id, "pool_id": pool_id,
         "owner_id": owner_id, "status": chance.choice(statuses),
         "created_at": T0 - timedelta(hours=20) + index * timedelta(hours=20) / count}
        for index, (site_id, pool_id, owner_id) in enumerate(
            chance.choice(subjects) for _ in range(count))])
    db.session.commit()
    expected = _failing(db)
    assert 0 < len(expected) < len(subjects)

    run(db, T0)
    assert _firing(db) == expected

    # Three days on, a few subjects deploy again: some recover, some fail (again).
    later = T0 + timedelta(days=3)
    alerted = sorted(expected)
    steady = sorted(set((SubjectKind.SITE, s.id) for s in sites) - set(expected))
    changes = [(alerted[0], DeploymentStatus.SUCCEEDED), (alerted[1], DeploymentStatus.FAILED),
               (alerted[2], DeploymentStatus.RUNNING), (steady[0], DeploymentStatus.FAILED)]
    for (kind, subject_id), status in changes:
        site = db.session.get(Site, subject_id) if kind == SubjectKind.SITE else None
        rollout(db, site, status, pool_id=site.pool_id if site else subject_id,
                at=later - timedelta(minutes=30))
    run(db, later)
    now_expected = _failing(db)
    assert alerted[0] not in now_expected and steady[0] in now_expected
    assert now_expected[alerted[1]] != expected[alerted[1]]
    assert _firing(db) == now_expected


def test_a_rule_for_one_pool_ignores_the_others(db: Any, admin: User) -> None:
    nodes_pool(admin, "eu")
    inside, outside_ = factories.make_node("edge-eu", pool="eu"), factories.make_node("edge-1")
    rule(admin, "drift", pool="eu")
    for node in (inside, outside_):
        db.session.get(Node, node.id).drifted = True
    db.session.commit()
    run(db, T0)
    assert only_alert(db).node_id == inside.id


def test_turning_a_rule_off_closes_its_alerts_without_a_notice(
        db: Any, admin: User, heard: dict[str, int]) -> None:
    node = factories.make_node("edge-1")
    rule_id = rule(admin, "node_unreachable")
    health(db, node, ssh=False)
    run(db, T0)
    alerts.update_rule(admin, rule_id, {"enabled": False})
    run(db, T0 + MINUTE)
    assert only_alert(db).state == AlertState.RESOLVED
    assert notices(db) == ["alert.firing"]


def test_a_disabled_node_raises_nothing(db: Any, admin: User) -> None:
    node = factories.make_node("edge-1")
    rule(admin, "node_unreachable")
    health(db, node, ssh=False)
    db.session.get(Node, node.id).enabled = False
    db.session.commit()
    run(db, T0)
    assert db.session.scalar(select(Alert)) is None


# ----------------------------------------------------------------------------- notices


def test_every_notice_is_masked_in_every_channel(
        db: Any, admin: User, alice: User, telegram: FakeTelegram, smtp: SmtpServer,
        receiver: WebhookReceiver) -> None:
    notifiers.create_channel(admin, ChannelInput(name="ops", kind="telegram", target="1",
                                                 secret=TOKEN))
    notifiers.create_channel(admin, ChannelInput(name="mail", kind="email",
                                                 target="ops@mail.test"))
    notifiers.create_channel(alice, ChannelInput(name="hook", kind="webhook",
                                                 target=f"{receiver.url}/alice", secret=SECRET))
    site = factories.make_site(alice, DOMAIN)
    node = factories.make_node("edge-1.example.net", host="203.0.113.7")
    alerts.create_rule(admin, {"name": "Site down at 198.51.100.4", "kind": "site_down",
                               "threshold": 1})
    rule(admin, "node_unreachable")
    health(db, node, ssh=False)
    check(db, site, node, T0, failed=True, status=None)
    run(db, T0)
    check(db, site, node, T0 + MINUTE)
    health(db, node)
    run(db, T0 + MINUTE)
    texts = [*telegram.texts(), *(m.text for m in smtp.received),
             *(r.body.decode() for r in receiver.received)]
    assert len(texts) == 4 + 4 + 2
    for text in texts:
        assert_masked(text)
    assert any("s**p.e*****e.com" in text for text in texts)
    assert any("e****1.e*****e.net" in text for text in texts)
    assert all("[address]" in r.json["subject"] for r in receiver.received)


# ----------------------------------------------------------------------------- tenancy


def test_client_cannot_see_or_acknowledge_other_clients_alert(
        db: Any, admin: User, alice: User, bob: User) -> None:
    site = factories.make_site(alice, DOMAIN)
    node = factories.make_node("edge-1")
    rule(admin, "deployment_failed")
    rule(admin, "node_unreachable")
    rollout(db, site, DeploymentStatus.FAILED)
    health(db, node, ssh=False)
    run(db, T0)
    mine = db.session.scalar(select(Alert).where(Alert.site_id == site.id))
    nodes_alert = db.session.scalar(select(Alert).where(Alert.node_id == node.id))
    for alert_id in (mine.id, nodes_alert.id):
        for action in (alerts.get_alert, alerts.acknowledge):
            with pytest.raises(NotFound):
                action(bob, alert_id)
    with pytest.raises(NotFound):
        alerts.get_alert(alice, nodes_alert.id)
    assert alerts.list_alerts(bob).items == []
    assert [a.id for a in alerts.list_alerts(alice).items] == [mine.id]
    assert alerts.list_transitions(bob).total == 0
    assert {a.id for a in alerts.list_alerts(admin).items} == {mine.id, nodes_alert.id}
    assert alerts.acknowledge(alice, mine.id).acknowledged_by_id == alice.id
    assert db.session.get(Alert, mine.id).acknowledged_at is not None


def test_client_cannot_create_rules_or_silences(db: Any, alice: User) -> None:
    for action, data in ((alerts.create_rule, {"name": "x", "kind": "drift"}),
                         (alerts.create_silence, {"pool": "default",
                                                  "ends_at": utcnow() + MINUTE})):
        with pytest.raises(Forbidden):
            action(alice, data)
    for read in (alerts.list_rules, alerts.list_silences, alerts.add_recommended_rules):
        with pytest.raises(Forbidden):
            read(alice)
