"""The Telegram channel: the Bot API's `sendMessage` (base URL configurable, token from a file)."""

from __future__ import annotations

import httpx

from notify.channels.base import Delivery, post
from safecity.outbox import Outcome

TEXT_LIMIT = 4096
"""Telegram refuses longer messages; a long digest is cut (each page keeps its own record)."""


class TelegramChannel:
    """Sends each delivery as one message to the chat id in its address."""

    def __init__(self, base_url: str, token: str, timeout_s: float) -> None:
        self.url = f"{base_url.rstrip('/')}/bot{token}/sendMessage"
        self.client = httpx.AsyncClient(timeout=timeout_s)

    async def send(self, delivery: Delivery) -> Outcome:
        """One sendMessage call; 429's retry_after is honoured (as Retry-After)."""
        body = {
            "chat_id": delivery.address,
            "text": delivery.text[:TEXT_LIMIT],
            "disable_web_page_preview": True,
        }
        outcome = await post(self.client, self.url, json=body)
        return outcome

    async def close(self) -> None:
        """Close the HTTP client."""
        await self.client.aclose()
