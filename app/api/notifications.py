"""``/api/v1/notification-channels``: each user's own channels (Telegram, e-mail,
signed webhooks), their test messages and their deliveries.  Secrets (bot tokens,
webhook secrets) are write-only: no answer ever carries them."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields
from marshmallow.validate import Length, OneOf

from app.api.auth import ApiBlueprint, current_actor
from app.api.schemas import ErrorSchema, UtcDateTime
from app.extensions import limit_notification_tests
from app.services import notifiers

blp = ApiBlueprint(
    "notification_channels", __name__, url_prefix="/api/v1/notification-channels",
    description="Where the caller's notices go. Notices never carry an IP address and "
                "mask domain names. Webhooks are POSTed with X-RPCC-Signature: "
                "sha256=<hex HMAC-SHA256 of the body keyed with the secret> and "
                "X-RPCC-Timestamp: <Unix seconds>; redirects are not followed.",
)

_TARGET = ("telegram: the chat id (digits, or @channel); email: the address; "
           "webhook: an http(s) URL whose host the address policy allows")
_SECRET = ("write-only. telegram: the bot token; webhook: the signing secret (16 to 256 "
           "characters); email: none")


class ChannelSchema(Schema):
    id = fields.Integer(dump_only=True)
    name = fields.String(required=True, validate=Length(max=64))
    kind = fields.String(required=True, validate=OneOf(list(notifiers.NOTIFIERS)))
    target = fields.String(required=True, validate=Length(max=2048),
                           metadata={"description": _TARGET})
    secret = fields.String(load_only=True, load_default=None, validate=Length(max=256),
                           metadata={"description": _SECRET})
    enabled = fields.Boolean(load_default=None)
    events = fields.List(fields.String(validate=OneOf(list(notifiers.EVENTS))),
                         load_default=None, validate=Length(max=len(notifiers.EVENTS)),
                         metadata={"description": "events this channel receives: "
                                                  + ", ".join(notifiers.EVENTS)})
    has_secret = fields.Boolean(dump_only=True)
    created_at = UtcDateTime()


class ChannelUpdateSchema(ChannelSchema):
    """PATCH: keys left out keep their value (the secret too).  A class of its own so
    that the OpenAPI document names it, rather than numbering a second ``Channel``."""


class ChannelList(Schema):
    items = fields.List(fields.Nested(ChannelSchema))


class DeliverySchema(Schema):
    id = fields.Integer(dump_only=True)
    channel_id = fields.Integer(dump_only=True)
    event = fields.String(dump_only=True)
    status = fields.Function(lambda d: d.status.value, metadata={
        "description": "pending, sent or failed"})
    attempts = fields.Integer(dump_only=True)
    error = fields.String(dump_only=True, metadata={"description": "why the last attempt "
                                                                   "failed"})
    created_at = UtcDateTime()
    finished_at = UtcDateTime(allow_none=True)


class DeliveryList(Schema):
    items = fields.List(fields.Nested(DeliverySchema))


def _input(data: dict[str, Any]) -> notifiers.ChannelInput:
    return notifiers.ChannelInput(**{key: data.get(key) for key in (
        "name", "kind", "target", "secret", "enabled", "events")})


@blp.route("")
class Channels(MethodView):
    @blp.response(200, ChannelList)
    def get(self) -> dict[str, Any]:
        """The caller's channels."""
        return {"items": [notifiers.channel_to_dict(c)
                          for c in notifiers.list_channels(current_actor())]}

    @blp.arguments(ChannelSchema)
    @blp.response(201, ChannelSchema)
    @blp.alt_response(422, schema=ErrorSchema, description="an invalid field, or a webhook "
                                                           "URL the address policy refuses")
    def post(self, data: dict[str, Any]) -> dict[str, Any]:
        """Add a channel (receiving every event unless ``events`` says otherwise)."""
        return notifiers.channel_to_dict(notifiers.create_channel(current_actor(),
                                                                  _input(data)))


@blp.route("/<int:channel_id>")
class Channel(MethodView):
    @blp.response(200, ChannelSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, channel_id: int) -> dict[str, Any]:
        """One of the caller's channels."""
        return notifiers.channel_to_dict(notifiers.get_channel(current_actor(), channel_id))

    @blp.arguments(ChannelUpdateSchema(partial=True))
    @blp.response(200, ChannelSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(422, schema=ErrorSchema, description="an invalid field")
    def patch(self, data: dict[str, Any], channel_id: int) -> dict[str, Any]:
        """Change a channel; its secret stays unless a new one is given."""
        return notifiers.channel_to_dict(
            notifiers.update_channel(current_actor(), channel_id, _input(data)))

    @blp.response(204)
    @blp.alt_response(404, response="NOT_FOUND")
    def delete(self, channel_id: int) -> None:
        """Delete a channel and its deliveries."""
        notifiers.delete_channel(current_actor(), channel_id)


@blp.route("/<int:channel_id>/test")
class ChannelTest(MethodView):
    @limit_notification_tests
    @blp.response(202, DeliverySchema)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(429, response="TOO_MANY_REQUESTS")
    def post(self, channel_id: int) -> Any:
        """Send a test message in the background; follow it in the deliveries."""
        return notifiers.send_test(current_actor(), channel_id)


@blp.route("/<int:channel_id>/deliveries")
class ChannelDeliveries(MethodView):
    @blp.response(200, DeliveryList)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, channel_id: int) -> dict[str, Any]:
        """The channel's latest 20 deliveries, newest first."""
        return {"items": notifiers.list_deliveries(current_actor(), channel_id)}
