"""``/api/v1/settings/security`` (administrators): how people sign in."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema

from app.api.auth import ApiBlueprint, admin_only, current_actor
from app.api.schemas import StrictBoolean
from app.services import settings

blp = ApiBlueprint(
    "settings", __name__, url_prefix="/api/v1/settings",
    description="Sign-in settings (administrators only).",
)


class SecuritySettingsSchema(Schema):
    require_admin_two_factor = StrictBoolean(metadata={
        "description": "administrators must sign in with a second factor; one who has none "
                       "is held at its set-up after the password (API tokens keep working)"})


@blp.route("/security")
class SecuritySettings(MethodView):
    @admin_only
    @blp.response(200, SecuritySettingsSchema)
    def get(self) -> Any:
        """The sign-in settings in force."""
        return settings.get_security_settings(current_actor())

    @admin_only
    @blp.arguments(SecuritySettingsSchema)
    @blp.response(200, SecuritySettingsSchema)
    def put(self, data: dict[str, Any]) -> Any:
        """Change the sign-in settings; keys left out keep their value."""
        return settings.update_security_settings(current_actor(), data)
