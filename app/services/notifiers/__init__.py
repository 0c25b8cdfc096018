"""Notices to people: Telegram, e-mail and signed webhooks behind one interface
(:class:`~app.services.notifiers.base.Notifier`, one class per kind in the registry
``NOTIFIERS``), the users' channels, the deliveries, and the events that send them.

Every notice is masked (:mod:`.masking`) before any notifier sees it.  This module is
the package's only door: other modules import these names, never the submodules.
"""

from app.services.notifiers.base import DeliveryFailed, Notice, Notifier
from app.services.notifiers.channels import (
    DEFAULT_EVENTS,
    EVENTS,
    NOTIFIERS,
    ChannelInput,
    ChannelSummary,
    Queued,
    channel_summaries,
    channel_summary,
    channel_to_dict,
    create_channel,
    delete_channel,
    get_channel,
    list_channels,
    list_deliveries,
    notify,
    queue_notice,
    send_test,
    start_queued,
    update_channel,
    wait,
)
from app.services.notifiers.events import DEPLOYMENT_FAILED, rollout_concluded
from app.services.notifiers.masking import mask

__all__ = [
    "DEFAULT_EVENTS",
    "DEPLOYMENT_FAILED",
    "EVENTS",
    "NOTIFIERS",
    "ChannelInput",
    "ChannelSummary",
    "DeliveryFailed",
    "Notice",
    "Notifier",
    "Queued",
    "channel_summaries",
    "channel_summary",
    "channel_to_dict",
    "create_channel",
    "delete_channel",
    "get_channel",
    "list_channels",
    "list_deliveries",
    "mask",
    "notify",
    "queue_notice",
    "rollout_concluded",
    "send_test",
    "start_queued",
    "update_channel",
    "wait",
]
