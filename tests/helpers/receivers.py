"""Real receivers for the notifier's channels, on free loopback ports in threads.

- `HttpReceiver(kind="webhook")`: verifies the HMAC signature, refuses a stale timestamp
  (401) and a replayed idempotency key (409, as a real receiver that already has it);
- `kind="telegram"`: speaks the Bot API's `POST /bot<token>/sendMessage` (a wrong token
  is 401 as Telegram answers, a bad chat id 400);
- `kind="sms"`: a gateway taking the template's JSON with a bearer token;
- `down`: answer 503 to everything (an outage), `fail_next`: that many 503s first.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from standin import StandIn


@dataclass
class HttpReceiver:
    """One local HTTP receiver; `received` lists the accepted bodies in arrival order."""

    kind: str
    secret: str = "s3cret"
    max_skew_s: float = 300.0
    down: bool = False
    fail_next: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.server = StandIn(lambda r: self.handle(r.target, r.headers, r.body))

    @property
    def url(self) -> str:
        """The receiver's base URL."""
        return self.server.url

    def close(self) -> None:
        """Stop serving."""
        self.server.close()

    def handle(self, path: str, headers: Message, body: bytes) -> tuple[int, Any]:
        """(status, JSON answer) for one request."""
        with self._lock:
            if self.down or self.fail_next > 0:
                self.fail_next = max(0, self.fail_next - 1)
                return 503, {"ok": False, "description": "down"}
            status, reason = getattr(self, f"_{self.kind}")(path, headers, body)
            if status >= 300:
                self.refused.append((status, reason))
            return status, {"ok": status < 300, "description": reason, "result": {}}

    def _webhook(self, path: str, headers: Message, body: bytes) -> tuple[int, str]:
        stamp = headers.get("X-Safecity-Timestamp", "")
        mac = hmac.new(self.secret.encode(), stamp.encode() + b"." + body, hashlib.sha256)
        if not hmac.compare_digest(
            headers.get("X-Safecity-Signature", ""), "sha256=" + mac.hexdigest()
        ):
            return 401, "bad signature"
        if not stamp.isdigit() or abs(time.time() - int(stamp)) > self.max_skew_s:
            return 401, "stale timestamp (replay?)"
        key = headers.get("Idempotency-Key", "")
        if key in self.keys:
            return 409, "replayed idempotency key"
        self.keys.add(key)
        self.received.append(json.loads(body))
        return 200, "ok"

    def _telegram(self, path: str, headers: Message, body: bytes) -> tuple[int, str]:
        if path != f"/bot{self.secret}/sendMessage":
            return 401, "Unauthorized"
        message = json.loads(body)
        if not str(message.get("chat_id", "")).lstrip("-").isdigit() or not message.get("text"):
            return 400, "Bad Request: chat not found"
        self.received.append(message)
        return 200, "ok"

    def _sms(self, path: str, headers: Message, body: bytes) -> tuple[int, str]:
        if headers.get("Authorization") != f"Bearer {self.secret}":
            return 401, "unauthorized"
        message = json.loads(body)
        if not str(message.get("to", "")).startswith("+"):
            return 400, "bad number"
        self.received.append(message)
        return 200, "queued"


class SmtpReceiver:
    """A real SMTP server (aiosmtpd) on a free loopback port, no TLS and no login (the
    channel's STARTTLS and login are tested in tests/notify/test_channels.py);
    `mails` lists (recipients, raw message) in arrival order."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        from control.stack import free_port

        self.mails: list[tuple[list[str], bytes]] = []
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        """aiosmtpd's hook: keep the message."""
        self.mails.append((list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 OK"

    def close(self) -> None:
        """Stop serving."""
        self.controller.stop()
