"""What an alert's notices say.  A site's alert reaches its owner and the
administrators with the same words, which never name a node (see ``conditions``);
the notifiers mask every name and address on the way out."""

from __future__ import annotations

import enum
from datetime import datetime

from app.models import Alert, AlertRule
from app.models.base import as_utc
from app.services.alerts.kinds import kind_label
from app.services.notifiers import Notice

FIRING_EVENT = "alert.firing"
RESOLVED_EVENT = "alert.resolved"


class Occasion(enum.Enum):
    FIRING = "firing"
    # Fired during a maintenance window, still firing when it ended.
    FIRING_AFTER_SILENCE = "firing after silence"
    REMINDER = "reminder"
    RESOLVED = "resolved"


def notice(occasion: Occasion, alert: Alert, rule: AlertRule, subject: str,
           now: datetime) -> Notice:
    """The notice of ``alert`` (about ``subject``, by name) on ``occasion``."""
    severity = rule.severity.value.upper()
    summary = _sentence(alert.summary)
    fired = as_utc(alert.fired_at) if alert.fired_at else now
    about = f"{rule.name} ({kind_label(rule.kind).lower()}, {rule.severity.value})"
    if occasion is Occasion.RESOLVED:
        return Notice(RESOLVED_EVENT, f"[RESOLVED] {rule.name}: {subject}",
                      f"Resolved after {_lasted(fired, now)}: {about} for {subject}.\n"
                      f"Last seen: {summary}")
    if occasion is Occasion.REMINDER:
        return Notice(FIRING_EVENT, f"[{severity}, still firing] {rule.name}: {subject}",
                      f"{summary}\nStill firing, for {_lasted(fired, now)} now (since "
                      f"{_when(fired)}). Acknowledge the alert to stop these reminders.\n"
                      f"Rule: {about}.")
    text = f"{summary}\nFiring since {_when(fired)}.\nRule: {about}."
    if occasion is Occasion.FIRING_AFTER_SILENCE:
        text += "\nIt began during a maintenance window, which has ended."
    return Notice(FIRING_EVENT, f"[{severity}] {rule.name}: {subject}", text)


def _sentence(summary: str) -> str:
    text = summary.strip() or "no details"
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _lasted(start: datetime, end: datetime) -> str:
    minutes = max(0, int((end - start).total_seconds() // 60))
    days, rest = divmod(minutes, 1440)
    hours, minutes = divmod(rest, 60)
    parts = [f"{days} d" if days else "", f"{hours} h" if hours else "",
             f"{minutes} min" if minutes or not (days or hours) else ""]
    return " ".join(part for part in parts if part)
