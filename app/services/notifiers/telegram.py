"""Telegram through the Bot API's ``sendMessage`` (HTML parse mode), at
``TELEGRAM_API_BASE_URL`` so that tests and private Bot API servers can stand in.

The bot token is part of every request's URL: it is never logged, and no exception
text (which would carry the URL) reaches a log line or a delivery's error."""

from __future__ import annotations

import html
import logging
import re
from typing import Any

import requests
from flask import current_app

from app.models import NotificationChannel
from app.services.notifiers.base import DeliveryFailed, Notice, Notifier
from app.services.notifiers.masking import mask_word

log = logging.getLogger(__name__)

# Telegram refuses longer messages (counted after entities are parsed; counting the
# escaped text is stricter and so safe).
MAX_MESSAGE = 4096
TIMEOUT = (5.0, 15.0)
_CHAT_ID = re.compile(r"^(?:-?\d{1,20}|@[A-Za-z][A-Za-z0-9_]{4,31})$")
_TOKEN = re.compile(r"^\d{1,20}:[A-Za-z0-9_-]{20,100}$")


def split_message(subject: str, text: str, limit: int = MAX_MESSAGE) -> list[str]:
    """The notice as HTML messages of at most ``limit`` characters each, in order:
    cut at line ends where possible, and never inside an escaped character."""
    head = f"<b>{html.escape(subject)}</b>\n"
    parts: list[str] = []
    current = head
    for line in text.splitlines(keepends=True):
        for char in line:
            escaped = html.escape(char)
            if len(current) + len(escaped) > limit:
                cut = current.rfind("\n", len(head) if not parts else 0) + 1
                if cut <= 0 or cut == len(current):
                    cut = len(current)
                parts.append(current[:cut])
                current = current[cut:]
            current += escaped
    parts.append(current)
    return [part for part in parts if part.strip()]


class TelegramNotifier(Notifier):
    kind = "telegram"
    label = "Telegram"
    attempts = 2
    target_label = "Chat id (a number, or @channel)"
    secret_label = "Bot token"

    def clean_target(self, target: str) -> str:
        target = target.strip()
        if not _CHAT_ID.match(target):
            raise ValueError("must be a chat id (digits, may start with -) or an @channel name")
        return target

    def shown_target(self, target: str) -> str:
        return mask_word(target)

    def clean_secret(self, secret: str) -> str:
        secret = secret.strip()
        if not _TOKEN.match(secret):
            raise ValueError("must be a bot token as BotFather gives it (123456:ABC...)")
        return secret

    def send(self, channel: NotificationChannel, notice: Notice) -> None:
        base = str(current_app.config["TELEGRAM_API_BASE_URL"]).rstrip("/")
        url = f"{base}/bot{channel.secret}/sendMessage"
        for part in split_message(notice.subject, notice.text):
            self._post(channel, url, part)

    @staticmethod
    def _post(channel: NotificationChannel, url: str, text: str) -> None:
        payload: dict[str, Any] = {"chat_id": channel.target, "text": text, "parse_mode": "HTML",
                   "disable_web_page_preview": True}
        try:
            response = requests.post(url, json=payload, timeout=TIMEOUT,
                                     allow_redirects=False)
        except requests.Timeout:
            raise DeliveryFailed("Telegram did not answer in time") from None
        except requests.RequestException as exc:
            log.warning("channel %s: Telegram cannot be reached (%s)", channel.id,
                        type(exc).__name__)
            raise DeliveryFailed("Telegram cannot be reached from this server") from None
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if response.status_code == 200 and answer.get("ok"):
            return
        description = str(answer.get("description") or "")[:150]
        log.warning("channel %s: Telegram answered %s", channel.id, response.status_code)
        if response.status_code in (401, 404):
            raise DeliveryFailed("Telegram refused the bot token: check it with BotFather",
                                 retry=False)
        if response.status_code in (400, 403):
            raise DeliveryFailed(f"Telegram refused the message ({description or 'no reason'}):"
                                 " check the chat id and that the bot may write there",
                                 retry=False)
        raise DeliveryFailed(f"Telegram answered {response.status_code}; trying again later")
