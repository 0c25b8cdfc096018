"""``/api/v1/tokens``: exchange a password for a token, list and revoke one's own."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields

from app.api.auth import ApiBlueprint, current_actor, public
from app.api.schemas import PageQuerySchema, UtcDateTime, WithSecrets, page_schema
from app.services import tokens

blp = ApiBlueprint(
    "tokens", __name__, url_prefix="/api/v1/tokens",
    description="API tokens: shown once at creation, stored only as a hash.",
)


class TokenRequestSchema(Schema):
    username = fields.String(required=True)
    password = fields.String(required=True, load_only=True)
    name = fields.String(load_default="api", metadata={"description": "a label for the token"})
    expires_in_days = fields.Integer(load_default=tokens.DEFAULT_EXPIRY_DAYS, metadata={
        "description": "days until the token stops working (1 to 3650)"})
    read_only = fields.Boolean(load_default=False, metadata={
        "description": "a token that may only read (GET)"})
    code = fields.String(load_default=None, load_only=True, metadata={
        "description": "for accounts with two-factor sign-in: the code their app shows now, "
                       "or one of their recovery codes"})


class TokenSchema(Schema):
    id = fields.Integer(dump_only=True)
    name = fields.String(dump_only=True)
    prefix = fields.String(dump_only=True, metadata={"description": "first characters, to "
                                                                    "recognise the token"})
    created_at = UtcDateTime()
    last_used = UtcDateTime(allow_none=True)
    expires = UtcDateTime(allow_none=True, metadata={"description": "null: never expires "
                                                                    "(tokens made before expiry "
                                                                    "was required)"})
    read_only = fields.Boolean(dump_only=True)


class CreatedTokenSchema(Schema):
    token = fields.String(dump_only=True, metadata={"description": "shown in this answer only"})
    id = fields.Integer(dump_only=True)
    name = fields.String(dump_only=True)
    prefix = fields.String(dump_only=True)
    expires = UtcDateTime(allow_none=True)
    read_only = fields.Boolean(dump_only=True)


@blp.route("")
class Tokens(MethodView):
    @public
    @blp.arguments(TokenRequestSchema)
    @blp.response(201, CreatedTokenSchema)
    @blp.alt_response(401, response="UNAUTHORIZED")
    @blp.alt_response(429, response="TOO_MANY_REQUESTS")
    def post(self, data: dict[str, Any]) -> Any:
        """Create a token from a username and password.

        Failed attempts count with the login form's (see "Sign-in limits" in the
        README): a locked username or address answers 429 with ``Retry-After``.
        Accounts with two-factor sign-in send ``code`` too; a wrong code counts like
        a wrong password.
        """
        row, token = tokens.create_token_with_password(**data)
        return WithSecrets(row, token=token)

    @blp.arguments(PageQuerySchema, location="query")
    @blp.response(200, page_schema(TokenSchema))
    def get(self, query: dict[str, Any]) -> Any:
        """List the caller's live tokens."""
        return tokens.list_tokens_page(current_actor(), **query)


@blp.route("/<int:token_id>")
class TokenItem(MethodView):
    @blp.response(204)
    @blp.alt_response(404, response="NOT_FOUND")
    def delete(self, token_id: int) -> None:
        """Revoke a token: clients their own (another user's is not found), admins any."""
        tokens.revoke_token(current_actor(), token_id)
