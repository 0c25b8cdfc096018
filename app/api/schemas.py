"""Marshmallow pieces every resource shares: strict fields, pagination, the list
envelope and the error body.

Schemas check shape only (types, nesting, unknown fields); services check values.
This module imports nothing from the app, because ``app.extensions`` loads it (through
``app.api.base``) before anything else exists.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, fields
from marshmallow.validate import Range

_DIGITS = re.compile(r"[0-9]{1,9}")


class StrictBoolean(fields.Boolean):
    """JSON ``true`` or ``false`` only: marshmallow's Boolean would read "yes", "on",
    1 or "0" as a boolean, and a typo must not silently switch a proxy setting."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class QueryInteger(fields.Integer):
    """A non-negative decimal number in a query string.  Only ASCII digits pass, so
    " 7", "+7", "7.0" or "٧" are refused instead of being coerced to 7."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if not isinstance(value, str) or not _DIGITS.fullmatch(value):
            raise self.make_error("invalid")
        return int(value)


class RowId(fields.Integer):
    """An id in a JSON body.  One beyond the database's 64-bit integers is a field
    error: it would overflow the driver (a 500), as it answers 404 in a path."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, validate=Range(min=1, max=2**63 - 1), **kwargs)


class QueryDateTime(fields.AwareDateTime):
    """An ISO 8601 instant in a query string, returned in UTC (a value without an
    offset is taken as UTC), so that every database compares the same instant."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(format="iso", default_timezone=UTC, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        return super()._deserialize(value, attr, data, **kwargs).astimezone(UTC)


class UtcDateTime(fields.DateTime):
    """Answers always carry the offset: SQLite hands back naive values that are UTC."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(format="iso", dump_only=True, **kwargs)

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return super()._serialize(value, attr, obj, **kwargs)


class PageQuerySchema(Schema):
    """``?page=&per_page=`` of every list."""

    page = QueryInteger(validate=Range(min=1), metadata={"description": "1-based page number"})
    per_page = QueryInteger(
        validate=Range(min=1),
        metadata={"description": "items per page; at most 200 (larger values answer 200)"},
    )


def page_schema(item: type[Schema]) -> type[Schema]:
    """The list envelope ``{"items", "page", "per_page", "total"}`` around ``item``;
    named after it (``SitePage`` for ``SiteSchema``) in the OpenAPI document."""
    name = item.__name__.removesuffix("Schema") + "PageSchema"
    return Schema.from_dict(
        {
            "items": fields.List(fields.Nested(item), required=True),
            "page": fields.Integer(required=True),
            "per_page": fields.Integer(required=True, metadata={"description": "effective size"}),
            "total": fields.Integer(required=True, metadata={"description": "items on all pages"}),
        },
        name=name,
    )


class WithValues:
    """An object's attributes plus values worked out for one answer (a version's
    outcome, the names a new grant overlaps), so that the resource's schema
    serializes it like any other object."""

    def __init__(self, obj: Any, **values: Any) -> None:
        self._obj = obj
        for name, value in values.items():
            setattr(self, name, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._obj, name)


class WithSecrets(WithValues):
    """An object's attributes plus values shown in one answer only (a new token, a
    generated password).  A secret that is None is absent, so the schema omits it."""

    def __init__(self, obj: Any, **secrets: str | None) -> None:
        super().__init__(obj, **{name: value for name, value in secrets.items()
                                 if value is not None})


class ErrorDetailSchema(Schema):
    code = fields.String(
        required=True,
        metadata={"description": "bad_request, unauthorized, forbidden, not_found, conflict, "
                                 "invalid, rate_limited, ..."},
    )
    message = fields.String(required=True, metadata={"description": "for humans"})
    # ``fields`` is taken by marshmallow's Schema, hence the data_key.
    fields_ = fields.Dict(
        data_key="fields", keys=fields.String(), values=fields.String(),
        metadata={"description": "offending field (dotted path, e.g. backends.0.port) -> "
                                 "message; present on 422 and some 400"},
    )


class ErrorSchema(Schema):
    """Every error answer: ``{"error": {"code", "message", "fields"}}``."""

    error = fields.Nested(ErrorDetailSchema, required=True)
