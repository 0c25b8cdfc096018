"""Forms of the administrators' alert pages: rules and silences.  People give
durations in minutes; the services and the API count seconds and instants, and each
form converts (and puts the service's messages back under its own fields)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from wtforms import (
    BooleanField,
    DateTimeLocalField,
    IntegerField,
    SelectChoice,
    SelectField,
    StringField,
    SubmitField,
)
from wtforms.validators import NumberRange, Optional

from app.forms import ServiceForm, enum_choices
from app.models import AlertRule, AlertSeverity, Silence
from app.models.base import as_utc, utcnow
from app.services import alerts

_THRESHOLDS = "; ".join(f"{spec.label.lower()}: {spec.threshold.describe()}"
                        + (" (" + ", ".join(map(str, spec.threshold.offers)) + " are usual)"
                           if spec.threshold.offers else "")
                        for spec in alerts.KINDS.values() if spec.threshold is not None)
_WEEK_MINUTES = 7 * 24 * 60
_MINUTES = [Optional(), NumberRange(min=0, max=_WEEK_MINUTES,
                                    message=f"must be 0 to {_WEEK_MINUTES} (a week)")]
_LOCAL_TIME = "%Y-%m-%dT%H:%M"


class AlertRuleForm(ServiceForm):
    """A new rule (with its kind) or a rule's changes (its kind stays)."""

    name = StringField("Name", description="What the notices call it, e.g. Disk almost full.")
    kind = SelectField("Kind", choices=[SelectChoice(kind.value, spec.label)
                                        for kind, spec in alerts.KINDS.items()])
    threshold = StringField("Threshold", render_kw={"inputmode": "decimal",
                                                    "list": "threshold-offers"},
                            description=f"Empty for the kinds without one. {_THRESHOLDS}.")
    duration_minutes = IntegerField("Held for (minutes)", default=0, validators=_MINUTES,
                                    description="How long the condition must last before "
                                                "the alert fires; 0 fires at once.")
    severity = SelectField("Severity", choices=enum_choices(AlertSeverity),
                           default=AlertSeverity.WARNING.value)
    pool = SelectField("Pool", description="The rule watches only this pool's nodes and "
                                           "sites.")
    renotify_minutes = IntegerField("Remind every (minutes)", default=0, validators=_MINUTES,
                                    description="While firing and not acknowledged; 0 never "
                                                "reminds.")
    enabled = BooleanField("Enabled", default=True)
    submit = SubmitField("Save")

    _SERVICE_FIELDS = {"duration_seconds": "duration_minutes",
                       "renotify_seconds": "renotify_minutes"}

    def __init__(self, *args: Any, pools: list[str], creating: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pool.choices = [SelectChoice("", "every pool"),
                             *(SelectChoice(name, name) for name in pools)]
        if not creating:
            del self.kind

    @staticmethod
    def initial(rule: AlertRule, pool: str | None) -> dict[str, Any]:
        return {"name": rule.name, "threshold": "" if rule.threshold is None
                else f"{rule.threshold:g}", "duration_minutes": rule.duration_seconds // 60,
                "severity": rule.severity.value, "pool": pool or "",
                "renotify_minutes": rule.renotify_seconds // 60, "enabled": rule.enabled}

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name.data or "",
            "threshold": (self.threshold.data or "").strip() or None,
            "duration_seconds": (self.duration_minutes.data or 0) * 60,
            "severity": self.severity.data, "pool": self.pool.data or None,
            "renotify_seconds": (self.renotify_minutes.data or 0) * 60,
            "enabled": bool(self.enabled.data)}
        if self.kind is not None:
            data["kind"] = self.kind.data
        return data

    def add_service_errors(self, fields: dict[str, str]) -> None:
        super().add_service_errors({self._SERVICE_FIELDS.get(key, key): message
                                    for key, message in fields.items()})


class SilenceForm(ServiceForm):
    """A new silence: one node, pool or site, from a moment (now by default) for some
    minutes."""

    node = StringField("Node", description="A node's name.",
                       render_kw={"list": "node-names", "autocomplete": "off"})
    pool = SelectField("Pool", description="Its nodes and sites too.")
    site = StringField("Site", description="A site's domain.")
    starts_at = DateTimeLocalField("Starts (UTC)", format=_LOCAL_TIME, validators=[Optional()],
                                   description="Empty: now.")
    duration_minutes = IntegerField("Lasts (minutes)", default=60,
                                    validators=[Optional(), NumberRange(min=1, message=(
                                        "must be 1 or more"))])
    reason = StringField("Reason", description="What the maintenance is, for the others.")
    submit = SubmitField("Silence")

    def __init__(self, *args: Any, pools: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pool.choices = [SelectChoice("", "—"), *(SelectChoice(name, name)
                                                      for name in pools)]

    def to_data(self) -> dict[str, Any]:
        starts = self.starts_at.data.replace(tzinfo=UTC) if self.starts_at.data else None
        data: dict[str, Any] = {key: (self[key].data or "").strip() or None
                                for key in ("node", "pool", "site")}
        data["reason"] = (self.reason.data or "").strip()
        if starts is not None:
            data["starts_at"] = starts
        if self.duration_minutes.data:
            data["ends_at"] = (starts or utcnow()) + timedelta(minutes=self.duration_minutes.data)
        return data

    def add_service_errors(self, fields: dict[str, str]) -> None:
        super().add_service_errors({"duration_minutes" if key == "ends_at" else key: message
                                    for key, message in fields.items()})


class SilenceEditForm(ServiceForm):
    """A silence's window and reason (its target stays)."""

    starts_at = DateTimeLocalField("Starts (UTC)", format=_LOCAL_TIME)
    ends_at = DateTimeLocalField("Ends (UTC)", format=_LOCAL_TIME)
    reason = StringField("Reason")
    submit = SubmitField("Save")

    @staticmethod
    def initial(silence: Silence) -> dict[str, Any]:
        return {"starts_at": _local(silence.starts_at), "ends_at": _local(silence.ends_at),
                "reason": silence.reason}

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"reason": (self.reason.data or "").strip()}
        for key in ("starts_at", "ends_at"):
            if self[key].data is not None:
                data[key] = self[key].data.replace(tzinfo=UTC)
        return data


def _local(moment: datetime) -> datetime:
    """A stored instant as the form shows it: UTC, without an offset."""
    return as_utc(moment).replace(tzinfo=None)
