"""Bearer-token authentication for the API.

Every view of an ``ApiBlueprint`` needs a token unless it is marked ``@public``:
forgetting the mark fails closed.  Session cookies are never looked at, which is
also why the API blueprints are exempt from CSRF.  Views marked ``@admin_only``
refuse other accounts before their input is parsed; the services check again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import Response, current_app, g, request
from flask_smorest import Blueprint
from werkzeug.exceptions import BadRequest

from app.errors import Forbidden, Unauthorized
from app.models import User
from app.services import tokens

F = TypeVar("F", bound=Callable[..., Any])

_PUBLIC = "api_public"
_ADMIN_ONLY = "api_admin_only"


def public(view: F) -> F:
    """Let a view answer without a token, and drop the security requirement from
    its OpenAPI operation."""
    wrapped = Blueprint.doc(security=[])(view)
    setattr(wrapped, _PUBLIC, True)
    return wrapped


def admin_only(view: F) -> F:
    """Answer 403 to other accounts before the body is parsed, so that a client
    meets "forbidden" rather than a list of the fields an admin resource expects."""
    wrapped = Blueprint.doc(responses={403: "FORBIDDEN"})(view)
    setattr(wrapped, _ADMIN_ONLY, True)
    return wrapped


def current_actor() -> User:
    """The user whose token authenticated this request."""
    actor: User = g.api_actor
    return actor


def _marked(mark: str) -> bool:
    """Whether the view method answering this request carries ``mark``."""
    view = current_app.view_functions.get(request.endpoint or "")
    view_class = getattr(view, "view_class", None)
    handler = getattr(view_class, request.method.lower(), None) if view_class else view
    return bool(getattr(handler, mark, False))


def _authenticate() -> None:
    if _marked(_PUBLIC):
        return
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise Unauthorized("send an API token: 'Authorization: Bearer <token>'")
    token = tokens.authenticate_token(credentials.strip())
    if token is None:
        raise Unauthorized("the API token is invalid, expired or revoked")
    user = token.user
    if _marked(_ADMIN_ONLY) and not user.is_admin:
        raise Forbidden("administrators only")
    if token.read_only and request.method not in tokens.READ_METHODS:
        raise Forbidden("this token is read-only")
    g.api_actor = user


def _require_json_body() -> None:
    """A form or text body would reach the schema as "no fields": a PATCH would
    then answer 200 having changed nothing, so such a body is refused."""
    if request.content_length and not request.is_json:
        raise BadRequest("send a JSON body with 'Content-Type: application/json'")


def _challenge(response: Response) -> Response:
    """RFC 7235: every 401 names the scheme the client should use."""
    if response.status_code == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


class ApiBlueprint(Blueprint):
    """A flask-smorest blueprint that authenticates every request by bearer token
    and documents the 401 answer on each operation that needs one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.before_request(_authenticate)
        self.before_request(_require_json_body)
        self.after_request(_challenge)
        self._prepare_doc_cbks.append(self._prepare_auth_doc)

    @staticmethod
    def _prepare_auth_doc(doc: dict[str, Any], doc_info: dict[str, Any],
                          **kwargs: Any) -> dict[str, Any]:
        if doc_info.get("manual_doc", {}).get("security") != []:
            doc.setdefault("responses", {})[401] = "UNAUTHORIZED"
        return doc
