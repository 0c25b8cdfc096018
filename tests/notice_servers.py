"""Loopback servers that stand in for the places notices go: a Telegram Bot API and
a webhook receiver that checks signatures.  Each runs in a thread of the test process,
records what it got, and is stopped by the fixture that started it.
:func:`notice_fixtures` gives a test module them and a real SMTP server, with the
app's notices sent there."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from flask import Flask

from tests.processes import free_port
from tests.smtp import SmtpServer

#: An IPv4 or IPv6 address in a text: no notice may carry one (DESIGN: notifiers).
IP = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b|[0-9a-f]{0,4}:[0-9a-f]{0,4}:[0-9a-f:]*[0-9a-f]",
                re.I)


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _State:
    received: list[Recorded] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)


class _Server:
    """A threaded HTTP server on ``host`` and a free port."""

    def __init__(self, host: str) -> None:
        self.host, self.port = host, free_port(host)
        self.state = _State()
        handler = type("Handler", (_Handler,), {"owner": self})
        self._httpd = ThreadingHTTPServer((host, self.port), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def received(self) -> list[Recorded]:
        with self.state.arrived:
            return list(self.state.received)

    def clear(self) -> None:
        with self.state.arrived:
            self.state.received.clear()

    def wait_for(self, count: int = 1, timeout: float = 10.0) -> list[Recorded]:
        deadline = time.monotonic() + timeout
        with self.state.arrived:
            while len(self.state.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{count} requests expected, got "
                                         f"{len(self.state.received)} after {timeout}s")
                self.state.arrived.wait(left)
            return list(self.state.received)

    def answer(self, record: Recorded) -> tuple[int, dict[str, Any]]:
        raise NotImplementedError

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


class _Handler(BaseHTTPRequestHandler):
    owner: _Server

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers.get("Content-Length") or 0)
        record = Recorded(self.path, dict(self.headers.items()), self.rfile.read(length))
        status, answer = self.owner.answer(record)
        with self.owner.state.arrived:
            self.owner.state.received.append(record)
            self.owner.state.arrived.notify_all()
        body = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class FakeTelegram(_Server):
    """``POST /bot<token>/sendMessage`` answered as Telegram does: ``{"ok": true,
    "result": {...}}`` for the known token, 401 ``Unauthorized`` for any other."""

    def __init__(self, host: str = "127.0.0.1", token: str = "") -> None:
        self.token = token
        super().__init__(host)

    def answer(self, record: Recorded) -> tuple[int, dict[str, Any]]:
        if record.path != f"/bot{self.token}/sendMessage":
            return 401, {"ok": False, "error_code": 401, "description": "Unauthorized"}
        payload = record.json
        if len(payload.get("text", "")) > 4096:
            return 400, {"ok": False, "error_code": 400,
                         "description": "Bad Request: message is too long"}
        return 200, {"ok": True, "result": {"message_id": len(self.state.received) + 1,
                                            "chat": {"id": payload["chat_id"]},
                                            "date": int(time.time()),
                                            "text": payload["text"]}}

    def texts(self) -> list[str]:
        return [r.json["text"] for r in self.received]


class WebhookReceiver(_Server):
    """Accepts a POST only with a valid ``X-RPCC-Signature`` for ``secret``; records
    whether each one was valid."""

    def __init__(self, host: str = "127.0.0.1", secret: str = "") -> None:
        self.secret = secret
        self.valid: list[bool] = []
        super().__init__(host)

    def answer(self, record: Recorded) -> tuple[int, dict[str, Any]]:
        expected = "sha256=" + hmac.new(self.secret.encode(), record.body,
                                        hashlib.sha256).hexdigest()
        good = hmac.compare_digest(record.headers.get("X-RPCC-Signature", ""), expected)
        self.valid.append(good and "X-RPCC-Timestamp" in record.headers)
        return (200 if good else 401), {"ok": good}


def notice_fixtures(addresses: tuple[str, str, str], *, token: str, secret: str
                    ) -> tuple[Callable[..., Any], ...]:
    """The fixtures of a test module whose notices reach real receivers, for the
    module to assign to the names they carry::

        telegram, receiver, smtp, outside = notice_fixtures(ADDRESSES, token=..., secret=...)

    ``telegram`` (a Bot API accepting ``token``), ``receiver`` (a webhook receiver
    checking ``secret``) and ``smtp`` start once for the module, on ``addresses`` in
    that order, and stop at its end; ``outside`` (autouse) points the app's notices
    at them, retries failed deliveries at once and empties what they received,
    before each test."""
    telegram_address, receiver_address, smtp_address = addresses

    @pytest.fixture(scope="module")
    def telegram() -> Iterator[FakeTelegram]:
        server = FakeTelegram(telegram_address, token=token)
        yield server
        server.stop()

    @pytest.fixture(scope="module")
    def receiver() -> Iterator[WebhookReceiver]:
        server = WebhookReceiver(receiver_address, secret=secret)
        yield server
        server.stop()

    @pytest.fixture(scope="module")
    def smtp() -> Iterator[SmtpServer]:
        server = SmtpServer(smtp_address)
        yield server
        server.stop()

    @pytest.fixture(autouse=True)
    def outside(app: Flask, telegram: FakeTelegram, receiver: WebhookReceiver,
                smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
        from app.services.notifiers import channels

        for key, value in {"TELEGRAM_API_BASE_URL": telegram.url, "SMTP_HOST": smtp.host,
                           "SMTP_PORT": smtp.port, "SMTP_SECURITY": "none",
                           "MAIL_FROM": "rpcc@example.test"}.items():
            monkeypatch.setitem(app.config, key, value)
        monkeypatch.setattr(channels, "RETRY_DELAYS", (0.05, 0.1))
        for server in (telegram, receiver):
            server.clear()
        smtp.received.clear()

    return telegram, receiver, smtp, outside
