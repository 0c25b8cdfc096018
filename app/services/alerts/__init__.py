"""Alerting: the rules administrators set, the alerts their evaluation raises from what
the collectors observed, the notices those send, acknowledgement and maintenance
silences.

This module is the package's only door: other modules import these names, never the
submodules.
"""

from app.services.alerts.conditions import FRESH
from app.services.alerts.evaluation import evaluate
from app.services.alerts.kinds import KINDS, KindSpec, Threshold, kind_label
from app.services.alerts.listing import (
    STATES,
    acknowledge,
    acknowledgers,
    get_alert,
    list_alerts,
    list_transitions,
    subject_names,
)
from app.services.alerts.rules import (
    RECOMMENDED,
    add_recommended_rules,
    create_rule,
    delete_rule,
    get_rule,
    list_rules,
    pool_names,
    update_rule,
)
from app.services.alerts.silences import STATES as SILENCE_STATES
from app.services.alerts.silences import (
    SilenceView,
    create_silence,
    delete_silence,
    end_silence,
    get_silence,
    get_silence_view,
    list_silences,
    update_silence,
)

__all__ = [
    "FRESH",
    "KINDS",
    "RECOMMENDED",
    "SILENCE_STATES",
    "STATES",
    "KindSpec",
    "SilenceView",
    "Threshold",
    "acknowledge",
    "acknowledgers",
    "add_recommended_rules",
    "create_rule",
    "create_silence",
    "delete_rule",
    "delete_silence",
    "end_silence",
    "evaluate",
    "get_alert",
    "get_rule",
    "get_silence",
    "get_silence_view",
    "kind_label",
    "list_alerts",
    "list_rules",
    "list_silences",
    "list_transitions",
    "pool_names",
    "subject_names",
    "update_rule",
    "update_silence",
]
