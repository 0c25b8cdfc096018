"""``/api/v1/users`` (administrators): accounts, roles and quotas.

Passwords are write-only; when none is given at creation the generated one is in
that answer and nowhere else.
"""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields

from app.api.auth import ApiBlueprint, admin_only, current_actor
from app.api.schemas import (
    ErrorSchema,
    PageQuerySchema,
    StrictBoolean,
    UtcDateTime,
    WithSecrets,
    page_schema,
)
from app.models import Role, User
from app.services import two_factor, users
from app.web.filters import UserFilters

blp = ApiBlueprint(
    "users", __name__, url_prefix="/api/v1/users",
    description="Accounts (administrators only).",
)


class UserUpdateSchema(Schema):
    """PUT and PATCH alike: keys left out keep their value."""

    username = fields.String()
    email = fields.String()
    role = fields.String(
        metadata={"enum": [r.value for r in Role], "description": "default client"})
    password = fields.String(load_only=True, metadata={"description": "write-only"})
    max_sites = fields.Integer(strict=True, metadata={"description": "site quota"})
    is_active = StrictBoolean()


class UserCreateSchema(UserUpdateSchema):
    """Without ``password`` one is generated and returned once."""

    username = fields.String(required=True)
    email = fields.String(required=True)


class UserSchema(UserUpdateSchema):
    class Meta:
        exclude = ("password",)

    id = fields.Integer(dump_only=True)
    role = fields.String(dump_only=True, metadata={"enum": [r.value for r in Role]})
    two_factor = fields.Function(lambda user: two_factor.is_enabled(user), dump_only=True,
                                 metadata={"description": "signs in with a second factor"})
    last_login = UtcDateTime(allow_none=True)
    created_at = UtcDateTime()


class CreatedUserSchema(UserSchema):
    generated_password = fields.String(
        data_key="password", dump_only=True,
        metadata={"description": "present only when the password was generated; shown once"},
    )


class UserQuerySchema(UserFilters, PageQuerySchema):
    pass


@blp.route("")
class Users(MethodView):
    @admin_only
    @blp.arguments(UserQuerySchema, location="query")
    @blp.response(200, page_schema(UserSchema))
    def get(self, query: dict[str, Any]) -> Any:
        """List accounts."""
        return users.list_users(current_actor(), **query)

    @admin_only
    @blp.arguments(UserCreateSchema)
    @blp.response(201, CreatedUserSchema)
    def post(self, data: dict[str, Any]) -> Any:
        """Create an account."""
        user, generated = users.create_user(current_actor(), data)
        return WithSecrets(user, generated_password=generated)


@blp.route("/<int:user_id>")
class UserItem(MethodView):
    @admin_only
    @blp.response(200, UserSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, user_id: int) -> User:
        """Read an account."""
        return users.get_user(current_actor(), user_id)

    @admin_only
    @blp.arguments(UserUpdateSchema)
    @blp.response(200, UserSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def put(self, data: dict[str, Any], user_id: int) -> User:
        """Update an account; keys left out keep their value."""
        return users.update_user(current_actor(), user_id, data)

    @admin_only
    @blp.arguments(UserUpdateSchema)
    @blp.response(200, UserSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def patch(self, data: dict[str, Any], user_id: int) -> User:
        """Update some fields of an account."""
        return users.update_user(current_actor(), user_id, data)

    @admin_only
    @blp.response(204)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(409, schema=ErrorSchema, description="the user still owns sites")
    def delete(self, user_id: int) -> None:
        """Delete an account that owns no sites."""
        users.delete_user(current_actor(), user_id)


@blp.route("/<int:user_id>/two-factor")
class UserTwoFactor(MethodView):
    @admin_only
    @blp.response(204)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(409, schema=ErrorSchema, description="the user has no second factor")
    def delete(self, user_id: int) -> None:
        """Turn someone's two-factor sign-in off (e.g. after a lost phone); they sign in
        with the password and may set it up again.  Not one's own: that needs proof."""
        two_factor.reset(current_actor(), user_id)
