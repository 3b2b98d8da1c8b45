"""The SMS channel: an HTTP gateway, the request body from a template ({to}, {text})."""

from __future__ import annotations

import httpx

from notify.channels.base import Delivery, post
from safecity.outbox import Outcome

TEXT_LIMIT = 600
"""Four concatenated SMS parts: a digest is cut, its link to the first page kept."""


class SmsChannel:
    """POSTs the rendered template as JSON, with a bearer token when one is configured."""

    def __init__(
        self, url: str, template: dict[str, str], token: str | None, timeout_s: float
    ) -> None:
        self.url = url
        self.template = template
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.AsyncClient(timeout=timeout_s, headers=headers)

    async def send(self, delivery: Delivery) -> Outcome:
        """One POST of the filled-in template."""
        text = delivery.text[:TEXT_LIMIT]
        body = {
            name: value.replace("{to}", delivery.address).replace("{text}", text)
            for name, value in self.template.items()
        }
        return await post(
            self.client, self.url, json=body, headers={"Idempotency-Key": delivery.key}
        )

    async def close(self) -> None:
        """Close the HTTP client."""
        await self.client.aclose()
