"""The incident lifecycle message: what the alerts service and the API announce and the
notifier parses. Every step round-trips; anything else is a ValueError, never a crash."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safecity import incidents as inc

T0 = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


def _opened() -> inc.Incident:
    return inc.open_incident(
        city="tashkent", district="chilonzor", rule_id="gunshot", rule_type="event",
        severity="critical", place="chilonzor", devices=["gs-1", "pb-2"], opened_at=T0,
        value=2.0, message="Gunshot detected", event="gunshot",
    )  # fmt: skip


def test_every_step_round_trips_on_its_state_topic() -> None:
    incident = _opened()
    steps = [incident]
    for n, state in enumerate(("acknowledged", "dispatched", "resolved"), start=1):
        incident = inc.advance(incident, state, "ann", T0 + timedelta(minutes=n), f"step {n}")
        steps.append(incident)
    for step in steps:
        change = inc.change_of(step)
        assert change.topic == f"safecity/v1/tashkent/_incidents/{step.state.value}"
        again = inc.IncidentChange.parse(change.payload())
        assert again == change
        assert again.step == step.transitions[-1]
        assert again.incident.state is step.state


def test_a_change_without_a_step_or_with_extra_fields_is_refused() -> None:
    bare = _opened().model_copy(update={"transitions": ()})
    with pytest.raises(ValueError, match="1 to 8 transitions"):
        inc.IncidentChange(incident=bare)
    body = inc.change_of(_opened()).payload().replace(b'{"incident"', b'{"x":1,"incident"', 1)
    with pytest.raises(ValueError, match="Extra inputs"):
        inc.IncidentChange.parse(body)


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_value_error(payload: bytes) -> None:
    try:
        change = inc.IncidentChange.parse(payload)
    except ValueError:
        return
    assert change.incident.transitions  # pragma: no cover - random bytes are never one
