"""The incident lifecycle on the broker: every step as it happens, one message each.

`safecity/v1/{city}/_incidents/{state}` (QoS 1) carries an `IncidentChange`: the incident
with its transition log up to and including the step (the last transition). The alerts
service announces the openings and auto-resolutions it decides; the API every step an
operator, an acknowledgement link or Grafana takes. The transition log in InfluxDB stays
the truth: a step is announced after it is decided, and a consumer that must never miss
one also reads the log now and then (an announcement can be lost with its publisher).
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, model_validator

from safecity import topics
from safecity.incidents.model import Incident, Transition

# Steps per message at most: the state machine has four states.
_MAX_STEPS = 8


class IncidentChange(BaseModel):
    """One lifecycle step of an incident: the incident with its log up to that step."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    incident: Incident

    @model_validator(mode="after")
    def _has_a_step(self) -> Self:
        steps = self.incident.transitions
        if not steps or len(steps) > _MAX_STEPS:
            raise ValueError(f"an incident change carries 1 to {_MAX_STEPS} transitions")
        return self

    @property
    def step(self) -> Transition:
        """The step this message announces (the log's last)."""
        return self.incident.transitions[-1]

    @property
    def topic(self) -> str:
        """Where it is published: the city's `_incidents/{state}`."""
        return topics.incident_topic(self.incident.city, self.step.state.value)

    def payload(self) -> bytes:
        """The JSON body."""
        return self.model_dump_json().encode()

    @classmethod
    def parse(cls, payload: bytes) -> IncidentChange:
        """Parse a message body; ValueError (pydantic's ValidationError) if it is not one."""
        return cls.model_validate_json(payload)


def change_of(incident: Incident) -> IncidentChange:
    """The announcement of an incident's latest step."""
    return IncidentChange(incident=incident)


def notice_group(incident_id: str) -> str:
    """The outbox group of the notices sent once an incident is resolved: apart from its
    pages' group (the incident id), which its steps cancel, so a repeated step never
    cancels a notice; an incident's timeline lists both groups."""
    return f"{incident_id}/resolved"
