"""The payload contract: models round-trip, and `parse` refuses everything else with a reason."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safecity import catalogue
from safecity.catalogue import Quantity, Severity
from safecity.readings import (
    MAX_PAYLOAD_BYTES,
    Event,
    Reading,
    Rejection,
    RejectReason,
    Status,
    epoch_ms,
    event_model,
    format_epoch_ms,
    format_ts,
    from_epoch_ms,
    parse,
    reading_model,
    truncate_ms,
)
from safecity.topics import Channel

NOW = datetime(2026, 1, 15, 6, 0, 0, tzinfo=UTC)
WINDOW_LOW_MS = epoch_ms(NOW - timedelta(days=7))
WINDOW_HIGH_MS = epoch_ms(NOW + timedelta(minutes=5))
KINDS = sorted(catalogue.KINDS)
EVENT_TYPES = sorted(catalogue.EVENT_TYPES)
# (kind, event type) for every type some kind emits.
EMITTED = sorted({(k.name, t) for k in catalogue.KINDS.values() for t in k.emits_events})

PLATE = "0123456789abcdef" * 4
EXAMPLE_TEXT = "Zone A-1"


timestamps = st.integers(WINDOW_LOW_MS, WINDOW_HIGH_MS).map(from_epoch_ms)
seqs = st.integers(0, 2**63 - 1)


def _value_strategy(q: Quantity) -> st.SearchStrategy[Any]:
    if q.type == "float":
        assert q.low is not None and q.high is not None
        return st.floats(q.low, q.high, allow_nan=False, allow_infinity=False)
    if q.type == "int":
        assert q.low is not None and q.high is not None
        return st.integers(int(q.low), int(q.high))
    if q.type == "bool":
        return st.booleans()
    if q.choices:
        return st.sampled_from(q.choices)
    if q.name == "plate_hash":
        return st.from_regex(catalogue.PLATE_HASH_PATTERN, fullmatch=True)
    return st.from_regex(catalogue.DETAIL_TEXT_PATTERN, fullmatch=True)


@st.composite
def _values(draw: st.DrawFn, quantities: tuple[Quantity, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for q in quantities:
        if q.required or draw(st.booleans()):
            out[q.name] = draw(_value_strategy(q))
    return out


def _example_value(q: Quantity) -> Any:
    """A fixed valid value of a quantity."""
    if q.type == "float":
        assert q.low is not None and q.high is not None
        return float((q.low + q.high) / 2)
    if q.type == "int":
        assert q.low is not None and q.high is not None
        return int((q.low + q.high) // 2)
    if q.type == "bool":
        return True
    if q.choices:
        return q.choices[0]
    return PLATE if q.name == "plate_hash" else EXAMPLE_TEXT


def _example_values(quantities: tuple[Quantity, ...]) -> dict[str, Any]:
    return {q.name: _example_value(q) for q in quantities if q.required}


def _reading(kind: str, **changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "ts": format_ts(NOW),
        "seq": 7,
        "values": _example_values(catalogue.telemetry_quantities(kind)),
    }
    obj.update(changes)
    return obj


def _event(kind: str, event_type: str, **changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "ts": format_ts(NOW),
        "seq": 7,
        "type": event_type,
        "severity": catalogue.EVENT_TYPES[event_type].default_severity.value,
        "details": _example_values(catalogue.EVENT_TYPES[event_type].details),
    }
    obj.update(changes)
    return obj


def _dump(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _parse(kind: str, payload: bytes, channel: Channel = Channel.TELEMETRY) -> Any:
    return parse(kind, payload, channel=channel, now=NOW)


def _reason(result: object) -> RejectReason | None:
    return result.reason if isinstance(result, Rejection) else None


def _accepted(result: object) -> bool:
    return isinstance(result, Reading | Event | Status)


# --- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=25, deadline=None)  # a loaded 2-core box is slow, not wrong
@given(data=st.data())
def test_reading_round_trip(kind: str, data: st.DataObject) -> None:
    values = data.draw(_values(catalogue.telemetry_quantities(kind)), label="values")
    ts = data.draw(timestamps, label="ts")
    seq = data.draw(seqs, label="seq")
    model = reading_model(kind)
    reading = model(ts=ts, seq=seq, values=model.model_fields["values"].annotation(**values))
    payload = reading.to_payload()
    assert len(payload) <= MAX_PAYLOAD_BYTES
    parsed = _parse(kind, payload)
    assert parsed == reading, parsed
    assert type(parsed) is model
    assert parsed.fields() == values
    assert parsed.ts == ts
    assert parsed.ts_ms == epoch_ms(ts)

    # The epoch-millisecond form of the same timestamp is the same reading.
    obj = json.loads(payload)
    obj["ts"] = epoch_ms(ts)
    assert _parse(kind, _dump(obj)) == reading


@pytest.mark.parametrize(("kind", "event_type"), EMITTED)
@settings(max_examples=25, deadline=None)  # a loaded 2-core box is slow, not wrong
@given(data=st.data())
def test_event_round_trip(kind: str, event_type: str, data: st.DataObject) -> None:
    details = data.draw(_values(catalogue.EVENT_TYPES[event_type].details), label="details")
    ts = data.draw(timestamps, label="ts")
    seq = data.draw(seqs, label="seq")
    severity = data.draw(st.sampled_from(list(Severity)), label="severity")
    model = event_model(event_type)
    event = model(
        ts=ts,
        seq=seq,
        type=event_type,
        severity=severity,
        details=model.model_fields["details"].annotation(**details),
    )
    payload = event.to_payload()
    assert json.loads(payload)["severity"] == severity.value
    parsed = _parse(kind, payload, Channel.EVENT)
    assert parsed == event, parsed
    assert parsed.detail_fields() == details

    obj = json.loads(payload)
    obj["ts"] = epoch_ms(ts)
    assert _parse(kind, _dump(obj), Channel.EVENT) == event


@given(
    ts=timestamps,
    state=st.sampled_from(["online", "offline"]),
    reason=st.none() | st.from_regex(catalogue.DETAIL_TEXT_PATTERN, fullmatch=True),
    kind=st.sampled_from(KINDS),
)
def test_status_round_trip(ts: datetime, state: str, reason: str | None, kind: str) -> None:
    status = Status(ts=ts, state=state, reason=reason)
    parsed = _parse(kind, status.to_payload(), Channel.STATUS)
    assert parsed == status


def test_example_payloads_are_accepted() -> None:
    """The fixed examples the refusal tests start from are themselves valid."""
    for kind in KINDS:
        assert _accepted(_parse(kind, _dump(_reading(kind)))), kind


def test_example_events_are_accepted() -> None:
    for kind, event_type in EMITTED:
        result = _parse(kind, _dump(_event(kind, event_type)), Channel.EVENT)
        assert _accepted(result), (kind, event_type, result)


# --- never raises ----------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
# Objects shaped like messages, so validation goes deeper than "not an object".
message_like = st.fixed_dictionaries(
    {},
    optional={
        "ts": st.one_of(
            json_values, timestamps.map(format_ts), timestamps.map(epoch_ms), st.text(max_size=30)
        ),
        "seq": json_values,
        "values": json_values
        | st.dictionaries(
            st.sampled_from(["pm25", "lane", "congested", "battery", "x"]), json_values
        ),
        "type": st.sampled_from(EVENT_TYPES) | st.text(max_size=10),
        "severity": st.sampled_from(["low", "critical", "LOW", ""]) | json_values,
        "details": json_values,
        "state": st.sampled_from(["online", "offline"]) | json_values,
    },
)
kinds_any = st.sampled_from(KINDS) | st.text(max_size=12)
channels = st.sampled_from(list(Channel))


@settings(max_examples=100, deadline=None)
@given(payload=st.binary(max_size=300), kind=kinds_any, channel=channels)
def test_arbitrary_bytes_never_raise(payload: bytes, kind: str, channel: Channel) -> None:
    result = parse(kind, payload, channel=channel, now=NOW)
    assert isinstance(result, Reading | Event | Status | Rejection)


@settings(max_examples=100, deadline=None)
@given(obj=json_values | message_like, kind=kinds_any, channel=channels)
def test_arbitrary_json_never_raises(obj: Any, kind: str, channel: Channel) -> None:
    result = parse(kind, _dump(obj), channel=channel, now=NOW)
    assert isinstance(result, Reading | Event | Status | Rejection)
    if isinstance(result, Rejection):
        assert isinstance(result.reason, RejectReason)
        assert result.detail


def test_deep_nesting_is_bad_json_or_schema_not_a_crash() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    result = parse("air_quality", deep[:MAX_PAYLOAD_BYTES], now=NOW)
    assert _reason(result) == RejectReason.BAD_JSON


# --- specific reasons ------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{", id="truncated"),
        pytest.param(b"not json", id="text"),
        pytest.param(b"{'ts': 1}", id="single-quotes"),
        pytest.param(b'{"ts": 1,}', id="trailing-comma"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b'{"ts": "\xc3\x28"}', id="invalid-utf8-in-string"),
        pytest.param(
            f'{{"ts": "{format_ts(NOW)}", "seq": 1, "seq": 2, "values": {{}}}}'.encode(),
            id="duplicate-top-key",
        ),
        pytest.param(
            (
                f'{{"ts": "{format_ts(NOW)}", "seq": 1, '
                '"values": {"battery": 0.5, "battery": 0.6}}'
            ).encode(),
            id="duplicate-nested-key",
        ),
    ],
)
def test_bad_json(payload: bytes) -> None:
    assert _reason(_parse("cctv", payload)) == RejectReason.BAD_JSON


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
@pytest.mark.parametrize("where", ["values", "seq"])
def test_non_finite(token: str, where: str) -> None:
    if where == "values":
        text = f'{{"ts": "{format_ts(NOW)}", "seq": 1, "values": {{"pm25": {token}}}}}'
    else:
        text = f'{{"ts": "{format_ts(NOW)}", "seq": {token}, "values": {{}}}}'
    assert _reason(_parse("air_quality", text.encode())) == RejectReason.NON_FINITE


def _out_of_range_targets(kind: str) -> list[Quantity]:
    floats = [q for q in catalogue.telemetry_quantities(kind) if q.type == "float"]
    required = [q for q in floats if q.required]
    return required or floats


@pytest.mark.parametrize("kind", KINDS)
def test_out_of_range_above_high(kind: str) -> None:
    targets = _out_of_range_targets(kind)
    assert targets, kind
    for q in targets:
        assert q.high is not None
        obj = _reading(kind)
        obj["values"][q.name] = math.nextafter(q.high, math.inf)
        assert _reason(_parse(kind, _dump(obj))) == RejectReason.OUT_OF_RANGE, q.name
        obj["values"][q.name] = q.high
        assert _accepted(_parse(kind, _dump(obj))), q.name


@pytest.mark.parametrize("kind", KINDS)
def test_out_of_range_below_low(kind: str) -> None:
    for q in _out_of_range_targets(kind):
        assert q.low is not None
        obj = _reading(kind)
        obj["values"][q.name] = math.nextafter(q.low, -math.inf)
        assert _reason(_parse(kind, _dump(obj))) == RejectReason.OUT_OF_RANGE, q.name
        obj["values"][q.name] = q.low
        assert _accepted(_parse(kind, _dump(obj))), q.name


def test_int_out_of_range() -> None:
    obj = _reading("traffic")
    obj["values"]["lane"] = 13
    assert _reason(_parse("traffic", _dump(obj))) == RejectReason.OUT_OF_RANGE


def _without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


SCHEMA_CASES: list[Any] = [
    pytest.param("air_quality", _without(_reading("air_quality"), "ts"), id="missing-ts"),
    pytest.param("air_quality", _without(_reading("air_quality"), "seq"), id="missing-seq"),
    pytest.param("air_quality", _without(_reading("air_quality"), "values"), id="missing-values"),
    pytest.param(
        "air_quality",
        _reading("air_quality", values=_without(_reading("air_quality")["values"], "pm25")),
        id="missing-required-value",
    ),
    pytest.param("weather", _reading("weather", extra=1), id="extra-top-field"),
    pytest.param(
        "weather",
        _reading("weather", values={**_reading("weather")["values"], "pm25": 1.0}),
        id="extra-value-field",
    ),
    pytest.param("cctv", _reading("cctv", values={"battery": 0.5, "city": "x"}), id="extra-cctv"),
    pytest.param("noise", _reading("noise", values=[1, 2, 3]), id="values-not-object"),
    pytest.param(
        "noise",
        _reading("noise", values={**_reading("noise")["values"], "laeq": "55.0"}),
        id="string-number-float",
    ),
    pytest.param("noise", _reading("noise", seq="1"), id="string-number-seq"),
    pytest.param("noise", _reading("noise", seq=1.0), id="float-seq"),
    pytest.param("noise", _reading("noise", seq=True), id="bool-seq"),
    pytest.param(
        "traffic",
        _reading("traffic", values={**_reading("traffic")["values"], "lane": True}),
        id="bool-for-int",
    ),
    pytest.param(
        "crowd",
        _reading("crowd", values={**_reading("crowd")["values"], "people_count": False}),
        id="bool-for-int-required",
    ),
    pytest.param(
        "traffic",
        _reading("traffic", values={**_reading("traffic")["values"], "congested": 1}),
        id="int-for-bool",
    ),
    pytest.param(
        "traffic",
        _reading("traffic", values={**_reading("traffic")["values"], "intensity": True}),
        id="bool-for-float",
    ),
    pytest.param(
        "traffic",
        _reading("traffic", values={**_reading("traffic")["values"], "lane": 2.0}),
        id="float-for-int",
    ),
    pytest.param(
        "streetlight",
        _reading("streetlight", values={**_reading("streetlight")["values"], "status": "bad"}),
        id="enum-not-a-choice",
    ),
    pytest.param("noise", _reading("noise", seq=-1), id="seq-negative"),
    pytest.param("noise", _reading("noise", seq=2**63), id="seq-above-int64"),
    pytest.param("noise", [_reading("noise")], id="array-not-object"),
    pytest.param("noise", "just a string", id="string-not-object"),
    pytest.param("noise", None, id="null"),
    pytest.param("no_such_kind", _reading("noise"), id="unknown-kind"),
]


@pytest.mark.parametrize(("kind", "obj"), SCHEMA_CASES)
def test_schema(kind: str, obj: Any) -> None:
    result = _parse(kind, _dump(obj))
    assert _reason(result) == RejectReason.SCHEMA, result


EVENT_SCHEMA_CASES: list[Any] = [
    pytest.param("cctv", _event("cctv", "intrusion", type="bank_robbery"), id="unknown-type"),
    pytest.param("cctv", _without(_event("cctv", "intrusion"), "type"), id="missing-type"),
    pytest.param("cctv", _event("cctv", "intrusion", type=5), id="type-not-string"),
    pytest.param("cctv", _event("cctv", "gunshot"), id="type-not-emitted-by-kind"),
    pytest.param("air_quality", _event("traffic", "congestion"), id="kind-emits-nothing"),
    pytest.param("gunshot", _event("gunshot", "gunshot", severity="apocalyptic"), id="severity"),
    pytest.param(
        "gunshot", _without(_event("gunshot", "gunshot"), "severity"), id="missing-severity"
    ),
    pytest.param("gunshot", _event("gunshot", "gunshot", extra=True), id="extra-field"),
    pytest.param(
        "cctv",
        _event("cctv", "intrusion", details={**_event("cctv", "intrusion")["details"], "x": 1}),
        id="extra-detail",
    ),
    pytest.param(
        "anpr",
        _event("anpr", "red_light_violation", details={"plate_hash": "ABC123"}),
        id="plain-plate",
    ),
    pytest.param(
        "anpr",
        _event("anpr", "red_light_violation", details={"plate_hash": PLATE.upper()}),
        id="upper-hex-plate",
    ),
    pytest.param(
        "panic_button",
        _event("panic_button", "panic", details={"button": "b1\nevents,x=1 y=2"}),
        id="newline-in-text",
    ),
    pytest.param(
        "panic_button",
        _event("panic_button", "panic", details={"button": 'b"1'}),
        id="quote-in-text",
    ),
    pytest.param(
        "panic_button",
        _event("panic_button", "panic", details={"button": "<script>"}),
        id="html-in-text",
    ),
    pytest.param(
        "panic_button",
        _event("panic_button", "panic", details={"button": "b" * 65}),
        id="long-text",
    ),
    pytest.param(
        "traffic",
        _event(
            "traffic",
            "road_accident",
            details={"vehicles": True, "casualties": 0, "lanes_blocked": 1},
        ),
        id="bool-for-int-detail",
    ),
]


@pytest.mark.parametrize(("kind", "obj"), EVENT_SCHEMA_CASES)
def test_event_schema(kind: str, obj: Any) -> None:
    result = _parse(kind, _dump(obj), Channel.EVENT)
    assert _reason(result) == RejectReason.SCHEMA, result


def test_event_detail_out_of_range() -> None:
    obj = _event("gunshot", "gunshot")
    obj["details"]["lat"] = 90.5
    assert _reason(_parse("gunshot", _dump(obj), Channel.EVENT)) == RejectReason.OUT_OF_RANGE


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param({"ts": format_ts(NOW), "state": "asleep"}, id="unknown-state"),
        pytest.param({"ts": format_ts(NOW)}, id="missing-state"),
        pytest.param({"ts": format_ts(NOW), "state": "online", "x": 1}, id="extra"),
        pytest.param({"ts": format_ts(NOW), "state": "online", "reason": "a\nb"}, id="reason"),
    ],
)
def test_status_schema(obj: Any) -> None:
    assert _reason(_parse("weather", _dump(obj), Channel.STATUS)) == RejectReason.SCHEMA


@pytest.mark.parametrize(
    "ts",
    [
        pytest.param(NOW - timedelta(days=8), id="8-days-ago"),
        pytest.param(NOW + timedelta(minutes=6), id="6-min-ahead"),
        pytest.param(NOW - timedelta(days=7, milliseconds=1), id="just-past"),
        pytest.param(NOW + timedelta(minutes=5, milliseconds=1), id="just-ahead"),
        pytest.param(datetime(1970, 1, 1, tzinfo=UTC), id="epoch"),
    ],
)
@pytest.mark.parametrize("form", ["rfc3339", "epoch_ms"])
def test_ts_out_of_window(ts: datetime, form: str) -> None:
    value: str | int = format_ts(ts) if form == "rfc3339" else epoch_ms(ts)
    result = _parse("noise", _dump(_reading("noise", ts=value)))
    assert _reason(result) == RejectReason.TS_OUT_OF_WINDOW, result
    event = _event("traffic", "road_closed", ts=value)
    result = _parse("traffic", _dump(event), Channel.EVENT)
    assert _reason(result) == RejectReason.TS_OUT_OF_WINDOW, result


@pytest.mark.parametrize(
    "ts",
    [NOW - timedelta(days=7), NOW + timedelta(minutes=5), NOW],
    ids=["window-start", "window-end", "now"],
)
@pytest.mark.parametrize("form", ["rfc3339", "epoch_ms"])
def test_ts_window_edges_accepted(ts: datetime, form: str) -> None:
    value: str | int = format_ts(ts) if form == "rfc3339" else epoch_ms(ts)
    result = _parse("noise", _dump(_reading("noise", ts=value)))
    assert isinstance(result, Reading), result
    assert result.ts == ts


# Every millisecond datetime can hold: 0001-01-01 to 9999-12-31, either side of the epoch.
ALL_MS = st.integers(
    epoch_ms(datetime.min.replace(tzinfo=UTC)), epoch_ms(datetime.max.replace(tzinfo=UTC))
)


@given(ALL_MS)
def test_epoch_ms_round_trip(ms: int) -> None:
    at = from_epoch_ms(ms)
    assert at.tzinfo is UTC
    assert at.microsecond % 1000 == 0
    assert epoch_ms(at) == ms
    assert (at - datetime(1970, 1, 1, tzinfo=UTC)) == timedelta(milliseconds=ms)


@given(st.datetimes(timezones=st.just(UTC)))
def test_datetime_round_trip_keeps_the_millisecond(at: datetime) -> None:
    back = from_epoch_ms(epoch_ms(at))
    assert back <= at < back + timedelta(milliseconds=1)
    assert back == truncate_ms(at)


@given(st.integers(epoch_ms(datetime.min.replace(tzinfo=UTC)), WINDOW_HIGH_MS * 10))
def test_format_epoch_ms_parses_back(ms: int) -> None:
    text = format_epoch_ms(ms)
    assert text == format_ts(from_epoch_ms(ms))
    assert epoch_ms(datetime.fromisoformat(text)) == ms


def test_window_check_can_be_disabled() -> None:
    old = _dump(_reading("noise", ts="2001-09-09T01:46:40.000Z"))
    result = parse("noise", old, past_window=None, future_window=None)
    assert isinstance(result, Reading)
    assert result.ts_ms == 1_000_000_000_000


def test_window_uses_the_given_widths() -> None:
    payload = _dump(_reading("noise", ts=format_ts(NOW - timedelta(hours=2))))
    narrow = parse("noise", payload, now=NOW, past_window=timedelta(hours=1))
    assert _reason(narrow) == RejectReason.TS_OUT_OF_WINDOW
    assert isinstance(parse("noise", payload, now=NOW, past_window=timedelta(hours=3)), Reading)


def test_too_large() -> None:
    obj = _reading("cctv")
    base = _dump(obj)
    padded = base[:-1] + b" " * (MAX_PAYLOAD_BYTES - len(base)) + b"}"
    assert len(padded) == MAX_PAYLOAD_BYTES
    assert _accepted(_parse("cctv", padded))
    over = base[:-1] + b" " * (MAX_PAYLOAD_BYTES + 1 - len(base)) + b"}"
    assert len(over) == MAX_PAYLOAD_BYTES + 1
    assert _reason(_parse("cctv", over)) == RejectReason.TOO_LARGE
    assert _reason(_parse("cctv", b"x" * (MAX_PAYLOAD_BYTES + 1))) == RejectReason.TOO_LARGE


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-15T05:59:59.123Z", datetime(2026, 1, 15, 5, 59, 59, 123000, tzinfo=UTC)),
        ("2026-01-15T05:59:59.123+00:00", datetime(2026, 1, 15, 5, 59, 59, 123000, tzinfo=UTC)),
        ("2026-01-15T05:59:59Z", datetime(2026, 1, 15, 5, 59, 59, tzinfo=UTC)),
        ("2026-01-15T05:59:59.5Z", datetime(2026, 1, 15, 5, 59, 59, 500000, tzinfo=UTC)),
        ("2026-01-15T05:59:59.120000Z", datetime(2026, 1, 15, 5, 59, 59, 120000, tzinfo=UTC)),
    ],
)
def test_ts_formats_accepted(text: str, expected: datetime) -> None:
    result = _parse("noise", _dump(_reading("noise", ts=text)))
    assert isinstance(result, Reading), result
    assert result.ts == expected
    assert result.ts.utcoffset() == timedelta(0)
    # The epoch-millisecond form of the same instant is the same reading.
    same = _parse("noise", _dump(_reading("noise", ts=epoch_ms(expected))))
    assert same == result


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("2026-01-15T10:59:59.123+05:00", id="offset-+05:00"),
        pytest.param("2026-01-15T05:59:59.123-00:00", id="offset--00:00"),
        pytest.param("2026-01-15T05:59:59.123", id="naive"),
        pytest.param("2026-01-15 05:59:59.123Z", id="space-separator"),
        pytest.param("2026-01-15T05:59:59.1234Z", id="sub-ms-4-digits"),
        pytest.param("2026-01-15T05:59:59.123456Z", id="sub-ms-6-digits"),
        pytest.param("2026-01-15T05:59:59.1234567Z", id="7-digits"),
        pytest.param("2026-01-15", id="date-only"),
        pytest.param("1768456799123", id="epoch-as-string"),
        pytest.param("2026-13-15T05:59:59.123Z", id="month-13"),
        pytest.param("", id="empty"),
    ],
)
def test_ts_formats_refused(text: str) -> None:
    result = _parse("noise", _dump(_reading("noise", ts=text)))
    assert _reason(result) == RejectReason.SCHEMA, result


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(1_768_456_799_123.0, id="float-epoch"),
        pytest.param(-1, id="negative-epoch"),
        pytest.param(10**20, id="huge-epoch"),
        pytest.param(True, id="bool"),
        pytest.param(None, id="null"),
    ],
)
def test_ts_bad_values_refused(value: Any) -> None:
    result = _parse("noise", _dump(_reading("noise", ts=value)))
    assert _reason(result) == RejectReason.SCHEMA, result


@given(st.integers(WINDOW_LOW_MS, WINDOW_HIGH_MS))
def test_epoch_ms_equals_string_form(ms: int) -> None:
    as_int = _parse("weather", _dump(_reading("weather", ts=ms)))
    as_text = _parse("weather", _dump(_reading("weather", ts=format_ts(from_epoch_ms(ms)))))
    assert isinstance(as_int, Reading)
    assert as_int == as_text
    assert as_int.ts_ms == ms


def test_format_ts_and_epoch_ms() -> None:
    ts = datetime(2026, 1, 15, 5, 59, 59, 7000, tzinfo=UTC)
    assert format_ts(ts) == "2026-01-15T05:59:59.007Z"
    assert format_ts(datetime(999, 12, 31, 23, 59, 59, tzinfo=UTC)) == "0999-12-31T23:59:59.000Z"
    assert epoch_ms(ts) == 1_768_456_799_007
    assert epoch_ms(datetime(1970, 1, 1, tzinfo=UTC)) == 0


# --- catalogue consistency ---------------------------------------------------------------

_PY_TYPE = {"float": float, "int": int, "bool": bool, "enum": str}


def test_shared_event_detail_names_have_one_type() -> None:
    """All events share one measurement: a name with two types would be a field type conflict."""
    # event_point adds these two fields to every event.
    seen: dict[str, set[type]] = {"seq": {int}, "kind": {str}}
    where: dict[str, list[str]] = {"seq": ["<point>"], "kind": ["<point>"]}
    for spec in catalogue.EVENT_TYPES.values():
        for q in spec.details:
            seen.setdefault(q.name, set()).add(_PY_TYPE[q.type])
            where.setdefault(q.name, []).append(spec.name)
    conflicts = {name: (types, where[name]) for name, types in seen.items() if len(types) > 1}
    assert conflicts == {}


def test_every_emitted_event_type_exists() -> None:
    for kind in catalogue.KINDS.values():
        for event_type in kind.emits_events:
            assert event_type in catalogue.EVENT_TYPES, (kind.name, event_type)


def test_telemetry_quantity_names_unique_per_kind() -> None:
    for kind in KINDS:
        names = [q.name for q in catalogue.telemetry_quantities(kind)]
        assert len(names) == len(set(names)), kind
