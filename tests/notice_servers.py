"""Loopback servers that stand in for the places notices go: a Telegram Bot API and
a webhook receiver that checks signatures.  Each runs in a thread of the test process,
records what it got, and is stopped by the fixture that started it."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.processes import free_port


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
