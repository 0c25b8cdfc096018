"""The API object: flask-smorest generates the OpenAPI document from the schemas and
views, while errors use the project's own JSON shape (see ``app.errors``)."""

from __future__ import annotations

from typing import Any

from flask_smorest import Api

from app.api.schemas import ErrorSchema

BEARER_SCHEME = "bearerAuth"

_DESCRIPTION = """\
Authenticate with `Authorization: Bearer <token>`; get a token from `POST /api/v1/tokens`
with a username and password. Session cookies are not accepted.

Lists answer `{"items": [...], "page", "per_page", "total"}` and take `page` and
`per_page` (at most 200). Errors answer `{"error": {"code", "message", "fields"}}`,
where `fields` names each offending field: 400 malformed request, 401 no valid token,
403 not allowed, 404 not found (also another client's object), 409 conflict,
422 invalid fields, 429 too many requests (`Retry-After` says how many seconds to wait).
Requests that start a deployment and certificate requests are limited per user.
"""


class ControlPlaneApi(Api):
    """flask-smorest would install a global HTTPException handler; ours answers JSON
    under /api and HTML elsewhere, so it is registered by ``create_app`` instead."""

    # Documents the body that app.register_errorhandlers really sends.
    ERROR_SCHEMA = ErrorSchema

    def _init_spec(self, **kwargs: Any) -> None:
        """Every operation needs a bearer token unless it opts out (see
        ``app.api.auth.public``)."""
        kwargs.setdefault("security", [{BEARER_SCHEME: []}])
        kwargs.setdefault("info", {"description": _DESCRIPTION})
        super()._init_spec(**kwargs)
        self.spec.components.security_scheme(
            BEARER_SCHEME,
            {"type": "http", "scheme": "bearer", "description": "an API token (rpcc_...)"},
        )

    def _register_pagination_header(self) -> None:
        """Lists carry their pagination in the body, not in flask-smorest's header."""
        return None

    def _register_error_handlers(self) -> None:
        return None


api = ControlPlaneApi()
