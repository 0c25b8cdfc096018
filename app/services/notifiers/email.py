"""E-mail through the server's own SMTP settings (``app.services.mail``)."""

from __future__ import annotations

from app.errors import MailFailed
from app.models import NotificationChannel
from app.security import normalize_email
from app.services import mail
from app.services.notifiers.base import DeliveryFailed, Notice, Notifier
from app.services.notifiers.masking import mask_address


class EmailNotifier(Notifier):
    kind = "email"
    label = "E-mail"
    attempts = 2
    target_label = "E-mail address"

    def clean_target(self, target: str) -> str:
        return normalize_email(target.strip())

    def shown_target(self, target: str) -> str:
        return mask_address(target)

    def send(self, channel: NotificationChannel, notice: Notice) -> None:
        try:
            mail.send(channel.target, notice.subject, notice.text)
        except MailFailed as exc:
            raise DeliveryFailed(exc.message) from None
