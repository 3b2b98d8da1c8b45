"""The incident model and its lifecycle state machine.

An incident is opened by an alert and then moves open -> acknowledged -> dispatched
-> resolved (an incident may also be resolved straight from open or acknowledged,
e.g. a false alarm or a cleared condition). The current state is the fold of its
transitions through `advance`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from safecity.catalogue import Severity
from safecity.errors import TransitionError
from safecity.readings import Timestamp, epoch_ms

_ID = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
# Notes are free text for operators but must stay one line-protocol line.
_NOTE = re.compile(r"^[^\x00-\x1f\x7f]{0,500}$")
_ONE_LINE = re.compile(r"^[^\x00-\x1f\x7f]{0,200}$")


class State(StrEnum):
    """Lifecycle states of an incident, in order."""

    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    DISPATCHED = "dispatched"
    RESOLVED = "resolved"


ALLOWED: dict[State, frozenset[State]] = {
    State.OPEN: frozenset({State.ACKNOWLEDGED, State.RESOLVED}),
    State.ACKNOWLEDGED: frozenset({State.DISPATCHED, State.RESOLVED}),
    State.DISPATCHED: frozenset({State.RESOLVED}),
    State.RESOLVED: frozenset(),
}

_FROZEN = ConfigDict(frozen=True, extra="forbid")
Identifier = Annotated[str, Field(pattern=_ID)]


class Transition(BaseModel):
    """One appended lifecycle step: to `state` from `from_state`, by whom, when, why."""

    model_config = _FROZEN

    incident_id: Identifier
    seq: Annotated[int, Field(ge=0)]
    state: State
    from_state: State | None
    at: Timestamp
    by: Identifier
    note: Annotated[str, Field(pattern=_NOTE.pattern)] = ""
    # A person who took the step (signed in through the identity provider): the
    # provider's subject and the person's name; empty for a key or a service.
    by_subject: Annotated[str, Field(pattern=_ONE_LINE.pattern)] = ""
    by_name: Annotated[str, Field(pattern=_ONE_LINE.pattern)] = ""


class Incident(BaseModel):
    """An incident with its full transition log (oldest first)."""

    model_config = _FROZEN

    id: Identifier
    city: Identifier
    district: Identifier
    rule_id: Identifier
    rule_type: str
    severity: Severity
    place: str
    devices: tuple[str, ...]
    opened_at: Timestamp
    value: float | None = None
    message: str = ""
    event: str | None = None
    transitions: tuple[Transition, ...] = ()

    @property
    def state(self) -> State:
        """The current state: the last transition's."""
        return self.transitions[-1].state if self.transitions else State.OPEN

    @property
    def resolved(self) -> bool:
        """True once resolved."""
        return self.state is State.RESOLVED

    def first(self, state: State) -> datetime | None:
        """When the incident first reached `state`, or None."""
        return next((t.at for t in self.transitions if t.state is state), None)

    @property
    def time_to_acknowledge(self) -> float | None:
        """Seconds from opening to the first acknowledgement (None if never)."""
        at = self.first(State.ACKNOWLEDGED)
        return None if at is None else (at - self.opened_at).total_seconds()

    @property
    def time_to_resolve(self) -> float | None:
        """Seconds from opening to resolution (None while unresolved)."""
        at = self.first(State.RESOLVED)
        return None if at is None else (at - self.opened_at).total_seconds()

    def to_public(self) -> dict[str, Any]:
        """A JSON-ready view (the API's response body)."""
        return {**self.model_dump(mode="json"), "state": self.state.value}


def incident_id(city: str, rule_id: str, place: str, opened_ms: int) -> str:
    """A deterministic id: a redelivered opening gives the same incident (idempotent)."""
    digest = hashlib.sha256(f"{city}|{rule_id}|{place}|{opened_ms}".encode()).hexdigest()
    return f"inc-{digest[:20]}"


def advance(
    incident: Incident,
    state: State | str,
    by: str,
    at: datetime,
    note: str = "",
    person: tuple[str, str] = ("", ""),
) -> Incident:
    """The incident with one more transition (`person`: the subject and name of a person
    who took it); TransitionError if the state machine refuses."""
    try:
        target = State(state)
    except ValueError:
        known = ", ".join(s.value for s in State)
        raise TransitionError(f"unknown state {state!r} (known: {known})") from None
    current = incident.state
    if target not in ALLOWED[current]:
        allowed = ", ".join(sorted(s.value for s in ALLOWED[current])) or "none (final)"
        raise TransitionError(
            f"incident {incident.id} is {current.value}: cannot go to {target.value} "
            f"(allowed from {current.value}: {allowed})"
        )
    if at < incident.transitions[-1].at:
        # The log is ordered by time; a step into the past would reorder history.
        at = incident.transitions[-1].at
    step = Transition(
        incident_id=incident.id,
        seq=len(incident.transitions),
        state=target,
        from_state=current,
        at=at,
        by=by,
        note=note,
        by_subject=person[0],
        by_name=person[1],
    )
    return incident.model_copy(update={"transitions": (*incident.transitions, step)})


def open_incident(
    *,
    city: str,
    district: str,
    rule_id: str,
    rule_type: str,
    severity: Severity | str,
    place: str,
    devices: Sequence[str],
    opened_at: datetime,
    value: float | None,
    message: str,
    event: str | None = None,
    by: str = "alerts",
) -> Incident:
    """A new incident with its `open` transition."""
    ident = incident_id(city, rule_id, place, epoch_ms(opened_at))
    opening = Transition(
        incident_id=ident, seq=0, state=State.OPEN, from_state=None, at=opened_at, by=by
    )
    return Incident(
        id=ident,
        city=city,
        district=district,
        rule_id=rule_id,
        rule_type=rule_type,
        severity=Severity(severity),
        place=place,
        devices=tuple(devices),
        opened_at=opened_at,
        value=value,
        message=message,
        event=event,
        transitions=(opening,),
    )
