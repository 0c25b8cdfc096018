"""The one interface every kind of channel implements, and what travels through it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from app.models import NotificationChannel
from app.services.notifiers.masking import mask


@dataclass(frozen=True)
class Notice:
    """A notice as it leaves the control plane: already masked (see ``masking``)."""

    event: str
    subject: str
    text: str


class DeliveryFailed(Exception):
    """A channel did not take a notice; ``reason`` is short and tells its owner what
    to check (never a token, a secret or a server's address)."""

    def __init__(self, reason: str, *, retry: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


class Notifier:
    """One kind of channel: how its settings are checked and how a notice is sent.

    :cvar label: the kind's name as people read it.
    :cvar attempts: how many times a notice is tried before its delivery is failed.
    :cvar target_label: what ``target`` is for this kind, in the forms and the API.
    :cvar secret_label: what ``secret`` is, or "" when the kind has none.
    """

    kind: ClassVar[str]
    label: ClassVar[str]
    attempts: ClassVar[int] = 1
    target_label: ClassVar[str]
    secret_label: ClassVar[str] = ""

    def clean_target(self, target: str) -> str:
        """The target normalised.  :raises ValueError: with a message for the field."""
        raise NotImplementedError

    def clean_secret(self, secret: str) -> str:
        """The secret checked (kinds without one never call this).

        :raises ValueError: with a message for the field."""
        return secret

    def shown_target(self, target: str) -> str:
        """The target as lists show it: enough for its owner to tell channels apart,
        too little for someone looking over their shoulder to use."""
        return mask(target)

    def send(self, channel: NotificationChannel, notice: Notice) -> None:
        """Hand one notice over, waiting (with a timeout) for the answer.

        :raises DeliveryFailed: the channel did not take it.
        """
        raise NotImplementedError
