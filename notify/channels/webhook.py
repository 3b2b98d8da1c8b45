"""The webhook channel: a signed JSON POST with a timestamp and an idempotency key.

The receiver checks `X-Safecity-Signature: sha256=<hex HMAC-SHA256(secret, "<ts>.<body>")>`
and refuses a stale `X-Safecity-Timestamp` (a replay) and a seen `Idempotency-Key`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import httpx

from notify.channels.base import Delivery, post
from safecity.outbox import Outcome

SIGNATURE = "X-Safecity-Signature"
TIMESTAMP = "X-Safecity-Timestamp"
IDEMPOTENCY = "Idempotency-Key"


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header's value for a body sent at `timestamp`."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


class WebhookChannel:
    """POSTs each delivery as JSON to one URL."""

    def __init__(self, url: str, secret: bytes, timeout_s: float) -> None:
        self.url = url
        self.secret = secret
        self.client = httpx.AsyncClient(timeout=timeout_s)

    async def send(self, delivery: Delivery) -> Outcome:
        """One signed POST."""
        body = json.dumps(
            {
                "key": delivery.key,
                "to": delivery.address,
                "subject": delivery.subject,
                "text": delivery.text,
                "pages": list(delivery.pages),
            },
            separators=(",", ":"),
        ).encode()
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP: stamp,
            SIGNATURE: signature(self.secret, stamp, body),
            IDEMPOTENCY: delivery.key,
        }
        return await post(self.client, self.url, content=body, headers=headers)

    async def close(self) -> None:
        """Close the HTTP client."""
        await self.client.aclose()
