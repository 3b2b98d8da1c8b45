"""A received bulk validated at once gets exactly the outcomes of one message at a time."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from ingest.validate import Accepted, DeviceRateLimiter, DuplicateDetector, Rejected, Validator
from safecity import topics
from safecity.mqtt import Incoming
from safecity.readings import format_ts
from safecity.registry import default_city

CITY = default_city()
NOISE = CITY.select(kind="noise")[0]
TRAFFIC = CITY.select(kind="traffic")[0]


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def validator(clock: Callable[[], float], rate: float = 1000.0, burst: float = 1000.0) -> Validator:
    return Validator(
        CITY,
        7 * 86_400,
        300,
        rate_limiter=DeviceRateLimiter(rate, burst, clock=clock),
        duplicates=DuplicateDetector(1000),
    )


def message(topic: str, body: object, mid: int, duplicate: bool = False) -> Incoming:
    raw = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    return Incoming(topic, raw, 1, mid, False, duplicate, 0)


def noise(seq: int, ts: datetime, laeq: float = 55.0) -> dict[str, object]:
    return {"ts": format_ts(ts), "seq": seq, "values": {"laeq": laeq, "lamax": 65.0, "la90": 47.0}}


def now() -> datetime:
    """The validators' clock reading: now, at a millisecond part of its own (456 ms)."""
    return datetime.now(UTC).replace(microsecond=456_000)


def outcome(o: Accepted | Rejected) -> tuple[str, ...]:
    if isinstance(o, Accepted):
        return ("accepted", o.line, str(o.channel), o.device_id, str(o.seq))
    return ("rejected", o.rejection.reason.value, o.rejection.detail, str(o.channel))


def test_a_mixed_bulk_has_the_one_at_a_time_outcomes() -> None:
    tele = topics.telemetry_topic(CITY.id, NOISE.district, NOISE.kind, NOISE.id)
    wrong_kind = topics.telemetry_topic(CITY.id, NOISE.district, "traffic", NOISE.id)
    traffic = topics.telemetry_topic(CITY.id, TRAFFIC.district, TRAFFIC.kind, TRAFFIC.id)
    status = topics.device_topic(CITY.id, NOISE.district, NOISE.kind, NOISE.id, "status")
    at = now()
    t = at - timedelta(minutes=5)
    bulk = [
        message(tele, noise(1, t), 1),
        message(tele, noise(2, t + timedelta(seconds=1)), 2),
        message(tele, noise(1, t), 3, duplicate=True),  # a redelivery: overwrites itself
        message(tele, noise(1, t, laeq=60.0), 4),  # the same seq, other content
        message(tele, noise(3, t + timedelta(seconds=1)), 5),  # another seq, same ms
        message(tele, noise(4, at + timedelta(hours=1)), 6),  # outside the window
        message(tele, b'{"ts":1,"seq":5,"seq":6,"values":{}}', 7),  # a repeated key
        message(tele, b"not json", 8),
        message(wrong_kind, noise(9, t), 9),  # identity mismatch
        message(topics.telemetry_topic(CITY.id, "x", "noise", "nobody"), noise(1, t), 10),
        message(traffic, {"ts": format_ts(t), "seq": 1, "values": {
            "intensity": 10.0, "occupancy": 0.5, "avg_speed": 30.0, "congested": True}}, 11),
        message(status, {"ts": format_ts(t), "state": "online"}, 12),
        message(tele, noise(10, t + timedelta(seconds=2), laeq=1e9), 13),  # out of range
    ]  # fmt: skip
    one, many = validator(Clock()), validator(Clock())
    singles = [one.validate(m.topic, m.payload, at, redelivery=m.duplicate) for m in bulk]
    assert [outcome(o) for o in many.validate_many(bulk, at)] == [outcome(o) for o in singles]
    kinds = [o.rejection.reason.value if isinstance(o, Rejected) else "ok" for o in singles]
    assert kinds == [
        "ok", "ok", "ok", "conflicting_duplicate", "conflicting_duplicate", "ts_out_of_window",
        "bad_json", "bad_json", "identity_mismatch", "unknown_device", "ok", "ok", "out_of_range",
    ]  # fmt: skip
    assert "congested=true" in outcome(singles[10])[1]


def test_a_bulk_takes_exactly_the_burst_of_a_device_new_in_it() -> None:
    """The first message of a new topic is validated alone (its own clock reading, later
    than the bulk's): the bucket must not lose the difference."""
    clock = Clock()

    def ticking() -> float:
        clock.now += 0.5  # every reading of the clock is later than the one before
        return clock.now

    many = validator(ticking, rate=0.001, burst=5)
    tele = topics.telemetry_topic(CITY.id, NOISE.district, NOISE.kind, NOISE.id)
    at = now()
    t = at - timedelta(minutes=5)
    bulk = [message(tele, noise(i, t + timedelta(seconds=i)), i + 1) for i in range(12)]
    outcomes = many.validate_many(bulk, at)
    assert [isinstance(o, Accepted) for o in outcomes] == [True] * 5 + [False] * 7
    reasons = {o.rejection.reason.value for o in outcomes if isinstance(o, Rejected)}
    assert reasons == {"rate_limited"}
