"""Planning stage: an opened incident -> every page of its escalation, as outbox messages.

The whole escalation is planned at once, each page with its `not_before` time (tier 1
now, its repeats every `repeat_every`, tier 2 `after` the opening, ...; low severities
wait out the quiet hours) and enqueued durably; an acknowledgement cancels what is still
pending (the incident id is the messages' group). So escalation survives `kill -9` and
runs on any clock. Who is on call is looked up for the time each page goes out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from notify.routing import Routing, Tier
from safecity.acklinks import AckClaim, new_claim
from safecity.catalogue import Severity
from safecity.outbox import Message

_ID = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
Signer = Callable[[AckClaim], str]


class OpenedIncident(BaseModel):
    """The alert that announces an incident's opening, as published on `_alerts/{severity}`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alert_id: Annotated[str, Field(pattern=_ID)]
    incident_id: Annotated[str, Field(pattern=_ID)]
    rule_id: Annotated[str, Field(pattern=_ID)]
    rule_type: str
    severity: Severity
    city: Annotated[str, Field(pattern=_ID)]
    district: Annotated[str, Field(pattern=_ID)]
    devices: tuple[str, ...]
    started_at: str
    value: float | None = None
    message: Annotated[str, Field(max_length=1000)] = ""
    event: str | None = None


def _tier_times(tier: Tier, start: float) -> list[float]:
    return [start + tier.after + k * tier.repeat_every for k in range(tier.repeats + 1)]


def _people(routing: Routing, tier: Tier, at: float) -> tuple[str, ...]:
    out = dict.fromkeys(tier.people)
    if tier.roster is not None:
        local = datetime.fromtimestamp(at, UTC).astimezone(routing.zone)
        out.update(dict.fromkeys(routing.roster(tier.roster).on_call(local)))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Planner:
    """Plans incidents of one city's routing; `sign` makes the acknowledgement tokens."""

    routing: Routing
    sign: Signer
    ack_base_url: str

    def plan(self, incident: OpenedIncident, now: float) -> list[Message]:
        """Every page of the incident's escalation (none when no route matches)."""
        route = self.routing.route(incident.district, incident.severity, incident.rule_id)
        if route is None:
            return []
        summary = {**incident.model_dump(mode="json", exclude={"alert_id"}), "noticed_at": now}
        out: list[Message] = []
        for t, tier in enumerate(self.routing.policy(route.policy).tiers, start=1):
            for k, at in enumerate(_tier_times(tier, now)):
                due = self.routing.quiet_until(incident.severity, datetime.fromtimestamp(at, UTC))
                for who in _people(self.routing, tier, at):
                    out += self._pages(incident, summary, who, (t, k), due.timestamp(), now)
        return out

    def _pages(
        self,
        incident: OpenedIncident,
        summary: dict[str, Any],
        who: str,
        step: tuple[int, int],
        due: float,
        now: float,
    ) -> list[Message]:
        """One person's pages of one step (tier, repeat): one per channel they carry."""
        person = self.routing.person(who)
        out = []
        for channel, address in person.contacts.items():
            expires = now + self.routing.ack_ttl
            token = self.sign(new_claim(incident.incident_id, incident.city, who, channel, expires))
            payload = {
                **summary,
                "person": who,
                "person_name": person.name,
                "tier": step[0],
                "repeat": step[1],
                "ack_url": f"{self.ack_base_url.rstrip('/')}/v1/ack/{token}",
            }
            key = f"{incident.incident_id}/t{step[0]}/r{step[1]}/{who}/{channel}"
            out.append(Message(key, channel, address, payload, incident.incident_id, due))
        return out
