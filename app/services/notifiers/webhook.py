"""Signed webhooks: a POST of a JSON body that the receiver can authenticate.

Headers: ``X-RPCC-Signature: sha256=<hex HMAC-SHA256 of the raw body, keyed with the
channel's secret>`` and ``X-RPCC-Timestamp: <Unix seconds>``; the body carries the
same ``timestamp``, so a receiver that checks the signature and refuses old
timestamps refuses replays too.

A webhook URL is a request the control plane makes for a tenant, so its host obeys
the backends' address policy when it is saved and again before every attempt (a name
may point elsewhere by then).  Each attempt connects to the very address it checked,
never to what a second lookup of the name gives (DNS rebinding); TLS still verifies
the certificate for the name.  Redirects are never followed and proxies from the
environment are not used."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

from app.models import NotificationChannel
from app.services import backends
from app.services.notifiers.base import DeliveryFailed, Notice, Notifier
from app.services.notifiers.masking import mask_url

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-RPCC-Signature"
TIMESTAMP_HEADER = "X-RPCC-Timestamp"
TIMEOUT = (5.0, 10.0)
MAX_URL = 2048


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class _CertificateFor(HTTPAdapter):
    """TLS to an address, with the name the URL gave for SNI and the certificate."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        super().__init__(max_retries=0)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False,
                         **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, server_hostname=self.hostname,
                                 assert_hostname=self.hostname, **pool_kwargs)


def pinned(parts: SplitResult) -> tuple[str, str]:
    """The URL with its host replaced by the address the policy let through, and the
    Host header naming the original host.

    :raises DeliveryFailed: when the host is refused now or does not resolve.
    """
    hostname = parts.hostname or ""
    try:
        address = backends.policy().connectable(hostname)
    except ValueError as exc:
        raise DeliveryFailed(f"the webhook URL is not allowed: {exc}", retry=False) from None
    except LookupError as exc:
        raise DeliveryFailed(f"the webhook cannot be reached ({exc})") from None
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc)), parts.netloc


def url_refusal(url: str) -> str | None:
    """Why the control plane may not call ``url``, or None."""
    if len(url) > MAX_URL:
        return f"must be at most {MAX_URL} characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    if parts.username is not None or parts.password is not None:
        return "must not carry a user name or password (the secret signs each request)"
    if any(ord(ch) <= 32 or ord(ch) == 127 for ch in url):
        return "must not contain spaces or control characters"
    reason = backends.policy().refusal(parts.hostname)
    if reason is not None:
        return f"is not allowed: {reason}"
    return None


class WebhookNotifier(Notifier):
    kind = "webhook"
    label = "Webhook"
    attempts = 3
    target_label = "URL (https:// or http://)"
    secret_label = "Secret (signs each request)"

    def clean_target(self, target: str) -> str:
        target = target.strip()
        reason = url_refusal(target)
        if reason is not None:
            raise ValueError(reason)
        return target

    def shown_target(self, target: str) -> str:
        return mask_url(target)

    def clean_secret(self, secret: str) -> str:
        if not 16 <= len(secret) <= 256 or any(ord(ch) < 32 or ord(ch) == 127
                                               for ch in secret):
            raise ValueError("must be 16 to 256 characters without control characters")
        return secret

    def send(self, channel: NotificationChannel, notice: Notice) -> None:
        reason = url_refusal(channel.target)
        if reason is not None:
            raise DeliveryFailed(f"the webhook URL {reason}", retry=False)
        timestamp = str(int(time.time()))
        body = json.dumps({"event": notice.event, "subject": notice.subject,
                           "text": notice.text, "timestamp": int(timestamp)}).encode()
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp,
                   SIGNATURE_HEADER: sign(channel.secret or "", body)}
        parts = urlsplit(channel.target)
        url, headers["Host"] = pinned(parts)
        with requests.Session() as session:
            session.trust_env = False
            if parts.scheme == "https":
                session.mount(url, _CertificateFor(parts.hostname or ""))
            try:
                response = session.post(url, data=body, headers=headers,
                                        timeout=TIMEOUT, allow_redirects=False)
            except requests.Timeout:
                raise DeliveryFailed("the webhook did not answer in time") from None
            except requests.exceptions.SSLError:
                raise DeliveryFailed(f"the webhook's TLS certificate is not valid for "
                                     f"{parts.hostname}", retry=False) from None
            except requests.RequestException as exc:
                log.info("channel %s: webhook unreachable (%s)", channel.id,
                         type(exc).__name__)
                raise DeliveryFailed("the webhook cannot be reached (connection failed)") from None
        if 200 <= response.status_code < 300:
            return
        if 300 <= response.status_code < 400:
            raise DeliveryFailed("the webhook answered with a redirect, which is not followed",
                                 retry=False)
        raise DeliveryFailed(f"the webhook answered HTTP {response.status_code}",
                             retry=response.status_code >= 500 or response.status_code == 429)
