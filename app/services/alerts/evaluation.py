"""The ``alerts`` job: compare what the collectors observed with every enabled rule and
move each alert through its states, sending one notice per move that calls for one.

A rule's condition starting for a subject opens an alert, ``pending`` (``firing`` at
once when the rule's duration is 0); it fires once the condition has held for the
rule's duration, and is resolved when the condition stops.  A pending alert whose
condition stops is resolved without a word.  A transition to firing and one from
firing to resolved each send one notice (``alert.firing``, ``alert.resolved``),
recorded in the transition's ``notified_at``; a firing alert reminds every
``renotify_seconds`` of its rule (a ``firing`` to ``firing`` transition) until it is
acknowledged or resolved.  Maintenance silences hold notices back (see
``silences``).  The next occurrence of a resolved condition is a new alert.

One evaluation is one transaction: the moves, their transitions and the deliveries
of their notices are committed together, and the notices leave only then.  Moves are
conditional updates and open alerts are unique per rule and subject in the database,
so two evaluations that overlap record and notify each move once (``transitions``).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError

from app.extensions import db
from app.models import Alert, AlertRule, AlertState, AlertTransition, Site, SubjectKind
from app.models.base import as_utc, utcnow
from app.services import notifiers
from app.services.alerts.conditions import Finding, Observations, find
from app.services.alerts.listing import subject_names
from app.services.alerts.notices import Occasion, notice
from app.services.alerts.silences import active_silences, covers
from app.services.alerts.transitions import changed, move

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Notice:
    transition: AlertTransition
    alert: Alert
    occasion: Occasion


class _Round:
    """One evaluation: its time, the silences active then, and what it did."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.silences = active_silences(now)
        self.notices: list[_Notice] = []
        self.counts: Counter[str] = Counter()

    def silenced(self, alert: Alert) -> bool:
        return covers(self.silences, alert)

    def fire(self, alert: Alert) -> None:
        held = self.silenced(alert)
        notified = {} if held else {"last_notified_at": self.now}
        transition = move(alert, AlertState.FIRING, self.now, silenced=held,
                          fired_at=self.now, **notified)
        if transition is not None:
            self.counts["fired"] += 1
            self._announce(transition, alert, Occasion.FIRING, held)

    def resolve(self, alert: Alert, *, quietly: bool) -> None:
        """Resolve ``alert``: with a notice when it was firing and its firing was
        announced (unless ``quietly``), held back when a silence covers it."""
        was_announced = alert.state == AlertState.FIRING and alert.last_notified_at is not None
        held = self.silenced(alert) and was_announced and not quietly
        transition = move(alert, AlertState.RESOLVED, self.now, silenced=held,
                          resolved_at=self.now)
        if transition is None:
            return
        self.counts["resolved"] += 1
        if was_announced and not quietly:
            self._announce(transition, alert, Occasion.RESOLVED, held)

    def open(self, rule: AlertRule, finding: Finding) -> None:
        """A new alert, unless an overlapping evaluation opened it first."""
        firing = rule.duration_seconds == 0
        held = firing and self.silenced(_like(finding))
        alert = Alert(rule_id=rule.id, subject_kind=finding.subject_kind,
                      subject_id=finding.subject_id, node_id=finding.node_id,
                      site_id=finding.site_id, pool_id=finding.pool_id,
                      state=AlertState.FIRING if firing else AlertState.PENDING,
                      value=finding.value, summary=finding.summary[:500], started_at=self.now,
                      fired_at=self.now if firing else None,
                      last_notified_at=self.now if firing and not held else None)
        try:
            with db.session.begin_nested():
                db.session.add(alert)
        except IntegrityError:
            return
        transition = AlertTransition(alert_id=alert.id, from_state=None,
                                     to_state=alert.state.value, at=self.now, silenced=held)
        db.session.add(transition)
        self.counts["opened"] += 1
        if firing:
            self.counts["fired"] += 1
            self._announce(transition, alert, Occasion.FIRING, held)

    def remind(self, alert: Alert, rule: AlertRule) -> None:
        """A reminder of a firing alert nobody acknowledged, once per interval."""
        if (alert.acknowledged_at is not None or not rule.renotify_seconds
                or alert.last_notified_at is None or self.silenced(alert)):
            return
        due = self.now - timedelta(seconds=rule.renotify_seconds)
        if as_utc(alert.last_notified_at) > due or not changed(
                update(Alert).where(Alert.id == alert.id, Alert.state == AlertState.FIRING,
                                    Alert.acknowledged_at.is_(None),
                                    Alert.last_notified_at <= due)
                .values(last_notified_at=self.now)):
            return
        transition = AlertTransition(alert_id=alert.id, from_state=AlertState.FIRING.value,
                                     to_state=AlertState.FIRING.value, at=self.now)
        db.session.add(transition)
        self._announce(transition, alert, Occasion.REMINDER, False)

    def release_held(self) -> None:
        """Send the notices silences held that still describe the present, once no
        silence covers their alert: the firing of an alert still firing, and the
        recovery of an alert whose firing was announced."""
        held = db.session.execute(
            select(AlertTransition, Alert).join(Alert, Alert.id == AlertTransition.alert_id)
            .where(AlertTransition.silenced.is_(True), AlertTransition.notified_at.is_(None),
                   or_(and_(AlertTransition.to_state == AlertState.FIRING.value,
                            Alert.state == AlertState.FIRING),
                       and_(AlertTransition.to_state == AlertState.RESOLVED.value,
                            Alert.last_notified_at.is_not(None))))
            .order_by(AlertTransition.id)).all()
        for transition, alert in held:
            if self.silenced(alert) or not changed(
                    update(AlertTransition).where(AlertTransition.id == transition.id,
                                                  AlertTransition.notified_at.is_(None))
                    .values(notified_at=self.now)):
                continue
            firing = transition.to_state == AlertState.FIRING.value
            if firing:
                alert.last_notified_at = self.now
            self.counts["released"] += 1
            self.notices.append(_Notice(transition, alert, Occasion.FIRING_AFTER_SILENCE
                                        if firing else Occasion.RESOLVED))

    def _announce(self, transition: AlertTransition, alert: Alert, occasion: Occasion,
                  held: bool) -> None:
        if held:
            self.counts["held"] += 1
            return
        transition.notified_at = self.now
        self.notices.append(_Notice(transition, alert, occasion))


def _like(finding: Finding) -> Alert:
    """An unsaved alert placed where ``finding`` is, for the silences to judge."""
    return Alert(node_id=finding.node_id, site_id=finding.site_id, pool_id=finding.pool_id)


def evaluate(now: datetime | None = None) -> str:
    """One evaluation of every rule (the ``alerts`` job); ``now`` stands for the clock.

    :returns: a one-line summary for the job's record."""
    now = now or utcnow()
    round_ = _Round(now)
    rules = {rule.id: rule for rule in db.session.scalars(select(AlertRule))}
    enabled = [rule for rule in rules.values() if rule.enabled]
    seen = Observations(now)
    found = {rule.id: {finding.key: finding for finding in find(rule, seen)}
             for rule in enabled}

    open_alerts = db.session.scalars(select(Alert).where(Alert.state != AlertState.RESOLVED)
                                     .order_by(Alert.id)).all()
    known = set()
    for alert in open_alerts:
        rule = rules[alert.rule_id]
        key = (alert.subject_kind, alert.subject_id)
        known.add((rule.id, key))
        finding = found.get(rule.id, {}).get(key)
        if finding is None:
            round_.resolve(alert, quietly=not rule.enabled)
            continue
        _refresh(alert, finding)
        held_for = now - as_utc(alert.started_at)
        if alert.state == AlertState.PENDING \
                and held_for >= timedelta(seconds=rule.duration_seconds):
            round_.fire(alert)
    for rule in enabled:
        for key, finding in found[rule.id].items():
            if (rule.id, key) not in known:
                round_.open(rule, finding)
    round_.release_held()
    for alert in open_alerts:
        if alert.state == AlertState.FIRING:
            round_.remind(alert, rules[alert.rule_id])

    queued = _queue(round_, rules)
    db.session.commit()
    notifiers.start_queued(queued)
    states = Counter(alert.state for alert in db.session.scalars(
        select(Alert).where(Alert.state != AlertState.RESOLVED)))
    counts = round_.counts
    return (f"{len(enabled)} rule(s): {states[AlertState.FIRING]} firing, "
            f"{states[AlertState.PENDING]} pending; {counts['fired']} fired, "
            f"{counts['resolved']} resolved, {len(round_.notices)} notice(s), "
            f"{counts['held']} held by silences, {counts['released']} released")


def _refresh(alert: Alert, finding: Finding) -> None:
    """Keep what the alert shows current; writes only what changed."""
    if alert.value != finding.value:
        alert.value = finding.value
    if alert.summary != finding.summary[:500]:
        alert.summary = finding.summary[:500]
    if alert.pool_id != finding.pool_id:
        alert.pool_id = finding.pool_id


def _queue(round_: _Round, rules: dict[int, AlertRule]) -> notifiers.Queued:
    """Write the deliveries of this round's notices (in its transaction): a site's
    alerts go to its owner and the administrators, others to administrators."""
    if not round_.notices:
        return []
    db.session.flush()
    alerts = [item.alert for item in round_.notices]
    names = subject_names(alerts)
    site_ids = {a.site_id for a in alerts if a.subject_kind == SubjectKind.SITE}
    owners = dict(db.session.execute(select(Site.id, Site.owner_id)
                                     .where(Site.id.in_(site_ids))).all()) if site_ids else {}
    queued: notifiers.Queued = []
    for item in round_.notices:
        alert = item.alert
        words = notice(item.occasion, alert, rules[alert.rule_id],
                       names.get((alert.subject_kind, alert.subject_id), "?"), round_.now)
        owner = owners.get(alert.site_id) \
            if alert.subject_kind == SubjectKind.SITE and alert.site_id is not None else None
        queued += notifiers.queue_notice(words.event, f"alert-transition:{item.transition.id}",
                                         owner, words, words)
    log.info("alerts: %d notice(s) to %d channel(s)", len(round_.notices), len(queued))
    return queued
