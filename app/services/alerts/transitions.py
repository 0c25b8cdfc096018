"""Moving an alert from one state to another, once.

Every move is a conditional update ("from the state I read"): when two evaluations
overlap, the second one's update finds the state changed and records nothing, so no
transition and no notice is ever doubled.  The row lock the first update takes makes
the second wait for its commit on PostgreSQL; SQLite has one writer at a time."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, update
from sqlalchemy.orm.attributes import set_committed_value

from app.extensions import db
from app.models import Alert, AlertState, AlertTransition


def move(alert: Alert, to: AlertState, at: datetime, *, silenced: bool = False,
         **values: Any) -> AlertTransition | None:
    """Move ``alert`` to ``to`` (setting ``values`` too) unless it left the state it
    was read in; the transition, or None when another evaluation moved it first.
    Needs the caller's transaction; the caller commits."""
    was = alert.state
    if not changed(update(Alert).where(Alert.id == alert.id, Alert.state == was)
                   .values(state=to, **values)):
        return None
    # The object follows the row without another UPDATE at the next flush.
    for key, value in {"state": to, **values}.items():
        set_committed_value(alert, key, value)
    transition = AlertTransition(alert_id=alert.id, from_state=was.value, to_state=to.value,
                                 at=at, silenced=silenced)
    db.session.add(transition)
    return transition


def changed(statement: Any) -> bool:
    """Run a conditional UPDATE of one row; whether it matched."""
    result = cast(CursorResult[Any], db.session.execute(
        statement.execution_options(synchronize_session=False)))
    return result.rowcount == 1
