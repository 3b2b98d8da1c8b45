"""The channel interface, the delivery it sends and the text every channel renders."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from safecity.outbox import Outcome


@dataclass(frozen=True, slots=True)
class Delivery:
    """What one send carries: one page, or a digest of several, to one address."""

    key: str
    """Idempotency key: the page's own, or one derived from all the pages of a digest."""
    address: str
    pages: tuple[Mapping[str, Any], ...]

    @classmethod
    def of(cls, address: str, keys: Sequence[str], pages: Sequence[Mapping[str, Any]]) -> Delivery:
        """A delivery of these pages (a digest's key hashes the keys of its pages)."""
        if len(keys) == 1:
            return cls(keys[0], address, tuple(pages))
        digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:32]
        return cls(f"digest-{digest}", address, tuple(pages))

    @property
    def subject(self) -> str:
        """A one-line summary (the e-mail subject)."""
        if len(self.pages) == 1:
            page = self.pages[0]
            label = "RESOLVED" if _resolved(page) else str(page["severity"]).upper()
            return f"[{label}] {page['rule_id']} in {page['district']} ({page['city']})"
        if all(_resolved(page) for page in self.pages):
            return f"[RESOLVED] {len(self.pages)} incidents resolved"
        worst = max(self.pages, key=lambda p: _RANK.get(str(p["severity"]), 0))["severity"]
        return f"[{str(worst).upper()}] {len(self.pages)} incidents need you"

    @property
    def text(self) -> str:
        """The message body: each incident, its tier and its acknowledgement link."""
        lines = [self.subject, ""]
        for page in self.pages:
            if _resolved(page):
                note = f" ({page['note']})" if page.get("note") else ""
                lines.append(
                    f"- resolved: {page['severity']} {page['rule_id']} in {page['district']} "
                    f"(incident {page['incident_id']}), by {page['by']}{note}"
                )
                continue
            reminder = f", reminder {page['repeat']}" if page["repeat"] else ""
            lines.append(
                f"- {page['severity']} {page['rule_id']} in {page['district']}: "
                f"{page['message'] or page['rule_id']} (incident {page['incident_id']}, "
                f"tier {page['tier']}{reminder})"
            )
            lines.append(f"  Acknowledge: {page['ack_url']}")
        return "\n".join(lines)


_RANK = {"low": 0, "medium": 1, "high": 2, "critical": 3}


def _resolved(page: Mapping[str, Any]) -> bool:
    """A resolution notice (no acknowledgement link), not a page."""
    return page.get("kind") == "resolved"


class Channel(Protocol):
    """A way to reach people: send one delivery, return how it went (never raise)."""

    async def send(self, delivery: Delivery) -> Outcome:
        """Deliver it; Outcome.retry for a transient failure, failed for a permanent one."""
        ...

    async def close(self) -> None:
        """Release connections; idempotent."""
        ...


def http_outcome(response: httpx.Response) -> Outcome:
    """2xx delivered, 409 too (the receiver has that idempotency key already); 408/425/429/
    5xx retry (Retry-After honoured); other 4xx failed."""
    status = response.status_code
    detail = f"HTTP {status}"
    if 200 <= status < 300 or status == 409:
        return Outcome.delivered(detail)
    if status in (408, 425, 429) or status >= 500:
        return Outcome.retry(detail, _retry_after(response))
    return Outcome.failed(f"{detail}: {response.text[:200]}")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


async def post(client: httpx.AsyncClient, url: str, **kwargs: Any) -> Outcome:
    """POST and map the answer (or a transport error: retry) to an outcome."""
    try:
        response = await client.post(url, **kwargs)
    except httpx.HTTPError as exc:
        return Outcome.retry(f"{type(exc).__name__}: {exc}"[:300])
    return http_outcome(response)
