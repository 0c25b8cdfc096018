"""The profile's notification channels: add one, change or delete it, send it a test
message and read its deliveries.  The services keep each channel its owner's."""

from __future__ import annotations

from typing import Any

from flask import flash, redirect, url_for

from app.client import bp
from app.client.forms import ChannelForm
from app.client.views import profile_context
from app.extensions import limit_notification_tests
from app.services import notifiers
from app.web import current_actor
from app.web.object_views import delete_object, edit_object


def _channel_url(channel_id: int) -> str:
    return url_for(".notification_channel_edit", channel_id=channel_id)


@bp.post("/profile/notifications")
def notification_channel_create() -> Any:
    form = ChannelForm()
    return edit_object(
        form, lambda f: notifiers.create_channel(current_actor(), f.to_input()),
        "client/profile_form.html",
        message=lambda channel: f"Channel {channel.name} added. Send it a test message "
                                "to see that it works.",
        next_url=url_for(".profile", _anchor="notifications"),
        **profile_context(channel_form=form))


@bp.route("/profile/notifications/<int:channel_id>", methods=["GET", "POST"])
def notification_channel_edit(channel_id: int) -> Any:
    actor = current_actor()
    summary = notifiers.channel_summary(actor, channel_id)
    return edit_object(
        ChannelForm(channel=summary.channel),
        lambda f: notifiers.update_channel(actor, channel_id, f.to_input()),
        "client/notification_channel_form.html", summary=summary,
        deliveries=notifiers.list_deliveries(actor, channel_id),
        message=lambda channel: f"Channel {channel.name} saved.",
        next_url=_channel_url(channel_id))


@bp.post("/profile/notifications/<int:channel_id>/test")
@limit_notification_tests
def notification_channel_test(channel_id: int) -> Any:
    notifiers.send_test(current_actor(), channel_id)
    flash("Test message on its way: its delivery is listed below (reload to follow it).",
          "success")
    return redirect(url_for(".notification_channel_edit", channel_id=channel_id,
                            _anchor="deliveries"))


@bp.post("/profile/notifications/<int:channel_id>/delete")
def notification_channel_delete(channel_id: int) -> Any:
    return delete_object(lambda: notifiers.delete_channel(current_actor(), channel_id),
                         message="Channel deleted.",
                         next_url=url_for(".profile", _anchor="notifications"))
