"""Planning stage: an opened incident -> every page of its escalation, as outbox messages;
a resolved one -> a notice to everyone its pages reached.

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
from typing import Any

from notify.routing import Routing, Tier
from safecity import incidents as inc
from safecity.acklinks import AckClaim, new_claim
from safecity.outbox import Entry, Message

Signer = Callable[[AckClaim], str]


def summary(incident: inc.Incident, now: float) -> dict[str, Any]:
    """What every message about an incident says of it (and when the notifier noticed)."""
    opened = incident.model_dump(mode="json", include={"opened_at"})["opened_at"]
    return {
        "incident_id": incident.id,
        "rule_id": incident.rule_id,
        "rule_type": incident.rule_type,
        "severity": incident.severity.value,
        "city": incident.city,
        "district": incident.district,
        "devices": list(incident.devices),
        "started_at": opened,
        "value": incident.value,
        "message": incident.message,
        "event": incident.event,
        "noticed_at": now,
    }


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

    def plan(self, incident: inc.Incident, now: float) -> list[Message]:
        """Every page of the incident's escalation (none when no route matches)."""
        route = self.routing.route(incident.district, incident.severity, incident.rule_id)
        if route is None:
            return []
        about = summary(incident, now)
        out: list[Message] = []
        for t, tier in enumerate(self.routing.policy(route.policy).tiers, start=1):
            for k, at in enumerate(_tier_times(tier, now)):
                due = self.routing.quiet_until(incident.severity, datetime.fromtimestamp(at, UTC))
                for who in _people(self.routing, tier, at):
                    out += self._pages(incident, about, who, (t, k), due.timestamp(), now)
        return out

    def _pages(
        self,
        incident: inc.Incident,
        about: dict[str, Any],
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
            token = self.sign(new_claim(incident.id, incident.city, who, channel, expires))
            payload = {
                **about,
                "person": who,
                "person_name": person.name,
                "tier": step[0],
                "repeat": step[1],
                "ack_url": f"{self.ack_base_url.rstrip('/')}/v1/ack/{token}",
            }
            key = f"{incident.id}/t{step[0]}/r{step[1]}/{who}/{channel}"
            out.append(Message(key, channel, address, payload, incident.id, due))
        return out

    def notices(self, incident: inc.Incident, told: list[Entry], now: float) -> list[Message]:
        """The resolution notice to every address a page of the incident reached (once
        per address and person), in the incident's notice group."""
        step = incident.transitions[-1]
        about = {**summary(incident, now), "kind": "resolved", "by": step.by, "note": step.note}
        out: dict[str, Message] = {}
        for entry in told:
            who = str(entry.payload.get("person", ""))
            key = f"{incident.id}/resolved/{who}/{entry.channel}"
            payload = {**about, "person": who, "person_name": entry.payload.get("person_name", who),
                       "tier": 0, "repeat": 0, "ack_url": ""}  # fmt: skip
            group = inc.notice_group(incident.id)
            out.setdefault(key, Message(key, entry.channel, entry.recipient, payload, group, now))
        return list(out.values())
