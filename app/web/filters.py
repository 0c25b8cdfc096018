"""Each list's filters, defined once for its page and its API endpoint.

A list's filters are one marshmallow schema whose fields are named after the
service's keyword arguments.  The API loads it from the query string and documents
it; the list page shows it as a filter bar (a WTForms form made from the schema:
each field's ``label``, and ``choices`` given in the schema or by the page) and,
once the bar is valid, reads its values through the same schema, so that a filter
means the same on the page and in the API.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time
from typing import Any, ClassVar

from marshmallow import Schema, fields
from marshmallow.validate import OneOf
from werkzeug.datastructures import MultiDict
from wtforms import DateField, Field, SelectChoice, SelectField, StringField
from wtforms.validators import Optional

from app.api.schemas import QueryDateTime, QueryInteger
from app.forms import SITE_ORDER, FilterForm, enum_choices
from app.models import DeploymentStatus, JobStatus, Role
from app.services.dashboard import CERTIFICATE_STATES, NODE_STATES, SITE_STATES


class Text(fields.String):
    """Text as typed, without the spaces around it."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        return str(super()._deserialize(value, attr, data, **kwargs)).strip()


def _named(values: Iterable[str]) -> list[SelectChoice]:
    return [SelectChoice(value, value) for value in values]


def _order(choices: Sequence[SelectChoice], default: str) -> Text:
    """A list's order: the page offers ``choices``, the API documents them."""
    return Text(metadata={"label": "Order", "choices": list(choices), "default": default,
                          "enum": [c.value for c in choices]})


class ListFilters(Schema):
    """Base of a list's filters.  Field metadata used by the filter bar: ``label``;
    ``choices`` (or given to :meth:`form` by field name, for choices read from the
    database) makes a select, whose first option is ``any`` when that is set and
    which starts at ``default``; a date-time field is a date picker covering whole
    UTC days (``day_end`` for the last one)."""

    @classmethod
    def form(cls, args: MultiDict[str, str], *, only: Sequence[str] | None = None,
             **choices: Sequence[Any]) -> FilterForm:
        """The filter bar of the page, filled from the query string ``args``."""
        schema_fields = cls._declared_fields
        names = only if only is not None else list(schema_fields)
        form_fields = {name: _form_field(schema_fields[name], choices.get(name))
                       for name in names}
        form_class = type(f"{cls.__name__}Form", (FilterForm,), form_fields)
        form: FilterForm = form_class(args)
        return form

    @classmethod
    def read(cls, args: MultiDict[str, str], *, only: Sequence[str] | None = None,
             **choices: Sequence[Any]) -> tuple[FilterForm, dict[str, Any] | None]:
        """The filter bar and, when it is valid, the service's keyword arguments."""
        form = cls.form(args, only=only, **choices)
        return form, cls.criteria(form) if form.validate() else None

    @classmethod
    def criteria(cls, form: FilterForm) -> dict[str, Any]:
        """The service's keyword arguments from a valid filter bar, read by this schema
        as the API reads a query string (blank fields are left out)."""
        raw: dict[str, str] = {}
        for field in form:
            value = field.data
            if value is None or value == "":
                continue
            if isinstance(value, date):
                end = cls._declared_fields[field.name].metadata.get("day_end", False)
                value = datetime.combine(value, time.max if end else time.min,
                                         tzinfo=UTC).isoformat()
            raw[field.name] = str(value)
        loaded: dict[str, Any] = cls().load(raw)
        return loaded


def _form_field(field: fields.Field, given: Sequence[Any] | None) -> Field:
    meta = field.metadata
    label = meta["label"]
    if isinstance(field, fields.DateTime):
        return DateField(label, validators=[Optional()])
    options = given if given is not None else meta.get("choices")
    if options is None:
        return StringField(label)
    any_choice = [SelectChoice("", meta["any"])] if "any" in meta else []
    if isinstance(field, fields.Integer):
        return SelectField(label, coerce=lambda v: int(v) if v else None,
                           choices=[*any_choice, *options])
    return SelectField(label, default=meta.get("default", ""), choices=[*any_choice, *options])


class SiteFilters(ListFilters):
    """Sites: a client's own, or every site for an administrator."""

    q = Text(metadata={"label": "Search", "description": "part of the domain or an alias"})
    owner_id = QueryInteger(metadata={"label": "Owner", "any": "any owner",
                                      "description": "administrators only"})
    pool = Text(metadata={"label": "Pool", "any": "any pool", "description": "pool name"})
    state = Text(metadata={"label": "State", "any": "any state",
                           "choices": _named(SITE_STATES), "enum": list(SITE_STATES)})
    certificate = Text(metadata={"label": "Certificate", "any": "any certificate",
                                 "choices": _named(CERTIFICATE_STATES),
                                 "enum": list(CERTIFICATE_STATES)})
    sort = _order(SITE_ORDER, "domain")

    # What the client's own list offers (the owner and the pool are the administrator's).
    CLIENT: ClassVar[tuple[str, ...]] = ("q", "state", "sort")


class NodeFilters(ListFilters):
    q = Text(metadata={"label": "Search", "description": "part of the name"})
    pool = Text(metadata={"label": "Pool", "any": "any pool", "description": "pool name"})
    state = Text(metadata={"label": "State", "any": "any state",
                           "choices": _named(NODE_STATES), "enum": list(NODE_STATES)})
    sort = _order([SelectChoice("name", "by name"), SelectChoice("-last_seen", "last seen first"),
                   SelectChoice("status", "by status")], "name")


class UserFilters(ListFilters):
    q = Text(metadata={"label": "Search", "description": "part of the username or email"})
    role = Text(metadata={"label": "Role", "any": "any role", "choices": enum_choices(Role),
                          "enum": [r.value for r in Role]})
    sort = _order([SelectChoice("username", "by name"),
                   SelectChoice("-last_login", "last signed in first")], "username")


class RolloutFilters(ListFilters):
    q = Text(metadata={"label": "Site", "description": "part of the site's domain"})
    status = Text(metadata={"label": "Status", "any": "any status",
                            "choices": enum_choices(DeploymentStatus),
                            "enum": [s.value for s in DeploymentStatus]})


class AuditFilters(ListFilters):
    username = Text(metadata={"label": "User"})
    action = Text(metadata={"label": "Action", "any": "any action"})
    object_type = Text(metadata={"label": "Object type"})
    since = QueryDateTime(metadata={"label": "From",
                                    "description": "ISO 8601; without an offset, UTC"})
    until = QueryDateTime(metadata={"label": "Until", "day_end": True,
                                    "description": "ISO 8601; without an offset, UTC"})


JOB_STATUSES = [s.value for s in JobStatus]


class JobRunFilters(ListFilters):
    job = Text(metadata={"label": "Job", "any": "any"})
    status = Text(validate=OneOf(JOB_STATUSES),
                  metadata={"label": "Outcome", "any": "any", "choices": _named(JOB_STATUSES)})
