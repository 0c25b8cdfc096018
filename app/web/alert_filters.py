"""The filters of the alert and silence lists, defined once for their pages and their
API endpoints (see :mod:`app.web.filters`)."""

from __future__ import annotations

from typing import ClassVar

from wtforms import SelectChoice

from app.forms import enum_choices
from app.models import AlertSeverity
from app.services import alerts
from app.web.filters import ListFilters, Text

_STATE_WORDS = {"open": "open (pending or firing)", "acknowledged": "acknowledged (open)",
                "all": "all, resolved too"}


class AlertFilters(ListFilters):
    state = Text(metadata={
        "label": "State", "default": "open", "enum": list(alerts.STATES),
        "choices": [SelectChoice(s, _STATE_WORDS.get(s, s)) for s in alerts.STATES],
        "description": "open (the default: pending or firing), firing, pending, "
                       "acknowledged (open and acknowledged), resolved or all"})
    kind = Text(metadata={
        "label": "Kind", "any": "any kind", "enum": [kind.value for kind in alerts.KINDS],
        "choices": [SelectChoice(kind.value, spec.label) for kind, spec in alerts.KINDS.items()]})
    severity = Text(metadata={"label": "Severity", "any": "any severity",
                              "choices": enum_choices(AlertSeverity),
                              "enum": [s.value for s in AlertSeverity]})

    # What a client's list offers: their alerts are all about their sites.
    CLIENT: ClassVar[tuple[str, ...]] = ("state", "kind")


class SilenceFilters(ListFilters):
    state = Text(metadata={"label": "State", "any": "any", "enum": list(alerts.SILENCE_STATES),
                           "choices": [SelectChoice(s, s) for s in alerts.SILENCE_STATES]})
