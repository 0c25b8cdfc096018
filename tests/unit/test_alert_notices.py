"""What an alert's notices say on each occasion, and that what leaves through the
notifiers names nothing an attacker could aim at."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.models import Alert, AlertKind, AlertRule, AlertSeverity, AlertState
from app.services.alerts.kinds import KINDS
from app.services.alerts.notices import Occasion, notice
from app.services.notifiers import mask

FIRED = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)


def site_down() -> tuple[Alert, AlertRule]:
    rule = AlertRule(name="Site down at 10.1.2.3", kind=AlertKind.SITE_DOWN, threshold=1,
                     severity=AlertSeverity.CRITICAL)
    alert = Alert(state=AlertState.FIRING, started_at=FIRED, fired_at=FIRED,
                  summary="shop.example.com fails its checks through 2 of 3 node(s) "
                          "(HTTP 502)")
    return alert, rule


def test_a_firing_notice_says_what_since_when_and_by_which_rule() -> None:
    alert, rule = site_down()
    words = notice(Occasion.FIRING, alert, rule, "shop.example.com", FIRED)
    assert (words.event, words.subject) == ("alert.firing", "[CRITICAL] Site down at 10.1.2.3: "
                                                            "shop.example.com")
    assert words.text == ("Shop.example.com fails its checks through 2 of 3 node(s) "
                          "(HTTP 502).\nFiring since 2027-03-01 12:00 UTC.\n"
                          "Rule: Site down at 10.1.2.3 (site down, critical).")


@pytest.mark.parametrize("occasion,event,says", [
    (Occasion.REMINDER, "alert.firing", "Still firing, for 1 d 2 h 5 min now"),
    (Occasion.RESOLVED, "alert.resolved", "Resolved after 1 d 2 h 5 min"),
    (Occasion.FIRING_AFTER_SILENCE, "alert.firing", "during a maintenance window"),
])
def test_reminders_recoveries_and_released_notices(occasion: Occasion, event: str,
                                                   says: str) -> None:
    alert, rule = site_down()
    words = notice(occasion, alert, rule, "shop.example.com",
                   FIRED + timedelta(days=1, hours=2, minutes=5))
    assert words.event == event and says in words.text


def test_what_leaves_is_masked() -> None:
    alert, rule = site_down()
    words = notice(Occasion.FIRING, alert, rule, "shop.example.com", FIRED)
    shown = mask(words.subject) + mask(words.text)
    assert "10.1.2.3" not in shown and "[address]" in shown
    assert "example" not in shown and "s**p.e*****e.com" in shown


def test_every_kind_with_a_threshold_describes_its_range() -> None:
    described = {kind: spec.threshold.describe() for kind, spec in KINDS.items()
                 if spec.threshold is not None}
    assert described == {AlertKind.CPU: "1 to 99 %", AlertKind.MEMORY: "1 to 99 %",
                         AlertKind.DISK: "1 to 99 %", AlertKind.LOAD: "0.1 to 1000",
                         AlertKind.SITE_DOWN: "1 to 1000 nodes",
                         AlertKind.CERT_EXPIRING: "1 to 365 days"}
    assert KINDS[AlertKind.CERT_EXPIRING].threshold.offers == (14, 7, 1)
