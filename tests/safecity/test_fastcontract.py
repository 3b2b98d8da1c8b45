"""The msgspec fast path accepts only what the pydantic contract accepts, with the same values."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from safecity import catalogue
from safecity.catalogue import Quantity
from safecity.fastcontract import decode_telemetry
from safecity.lineprotocol import Point, encode, series_key
from safecity.readings import Reading, Rejection, format_epoch_ms, format_ts, parse
from safecity.registry import default_city
from safecity.schema import measurement_of
from safecity.topics import Channel
from simulators.generators import generate

NOW = datetime(2026, 6, 1, 12, 0, 0, 123_456, tzinfo=UTC)
PAST, FUTURE = timedelta(days=7), timedelta(minutes=5)
KINDS = sorted(catalogue.KINDS)
TAGS = {"device_id": "d"}


def _slow(kind: str, payload: bytes) -> Reading | Rejection:
    out = parse(
        kind, payload, channel=Channel.TELEMETRY, now=NOW, past_window=PAST, future_window=FUTURE
    )
    assert not isinstance(out, Rejection) or out.reason.value  # a typed reason, never a raise
    return out  # type: ignore[return-value]


def _same_decision(kind: str, payload: bytes) -> bool:
    """Assert the fast path never accepts what `parse` refuses, nor with another seq, time
    or line; True when it accepted."""
    series = series_key(measurement_of(kind), TAGS)
    fast = decode_telemetry(kind, payload, series, NOW, PAST, FUTURE)
    slow = _slow(kind, payload)
    if fast is None:
        return False
    assert isinstance(slow, Reading), (payload, slow)
    seq, ts_ms, line = fast
    assert (seq, ts_ms) == (slow.seq, slow.ts_ms)
    # The same line: same values *and* types (25 and 25.0 are different fields).
    assert line == schema_line(kind, slow)
    return True


def schema_line(kind: str, reading: Reading) -> str:
    """The line the pydantic path writes for a reading (the ingest's slow path)."""
    fields = {"seq": reading.seq, **reading.fields()}
    return encode(Point(measurement_of(kind), TAGS, fields, reading.ts_ms))


def _good(q: Quantity) -> st.SearchStrategy[Any]:
    low = q.low if q.low is not None else 0
    high = q.high if q.high is not None else 0
    if q.type == "float":
        return st.one_of(
            st.floats(min_value=low, max_value=high),
            st.integers(min_value=int(low), max_value=int(high)),
            st.sampled_from([low, high, -0.0 if low <= 0 else low]),
        )
    if q.type == "int":
        return st.integers(min_value=int(low), max_value=int(high))
    if q.type == "bool":
        return st.booleans()
    return st.sampled_from(q.choices)


def _bad(q: Quantity) -> st.SearchStrategy[Any]:
    low = q.low if q.low is not None else 0
    high = q.high if q.high is not None else 0
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8),
        st.sampled_from(["on", "ok", "", "NaN", low - 1e-9, high + 1e-9, int(high) + 1]),
        st.sampled_from([c.upper() for c in q.choices] or ["x"]),
    )


_GOOD_TS = st.one_of(
    st.timedeltas(min_value=-PAST, max_value=FUTURE).map(lambda d: format_ts(NOW + d)),
    st.integers(min_value=-PAST // timedelta(milliseconds=1), max_value=299_000).map(
        lambda ms: int(NOW.timestamp() * 1000) + ms
    ),
)
_BAD_TS = st.one_of(
    st.integers(min_value=-10, max_value=2**63),
    st.timedeltas(min_value=timedelta(days=-8), max_value=timedelta(minutes=6)).map(
        lambda d: format_ts(NOW + d)
    ),
    st.sampled_from(
        [
            "2026-06-01T12:00:00Z",
            "2026-06-01T12:00:00.5Z",
            "2026-06-01T12:00:00.123456Z",
            "2026-06-01T12:00:00.123000Z",
            "2026-06-01T12:00:00+00:00",
            "2026-06-01T12:00:00+01:00",
            "2026-06-01 12:00:00Z",
            "2026-06-01T12:00:00.000Z\n",
            "",
        ]
    ),
    st.booleans(),
    st.floats(allow_nan=False),
    st.none(),
)
_FAULTS = [
    "field",
    "omit",
    "null",
    "extra",
    "ts",
    "seq",
    "envelope",
    "repeat",
    "repeat_blank",
    "repeat_escaped",
    "truncate",
    "blanks",
    "overflow",
    "digit",
    "utf8",
    "large",
]


def _values(draw: st.DrawFn, quantities: list[Any], faults: set[str]) -> dict[str, Any]:
    """The reading's values: good ones, then the value faults."""
    values: dict[str, Any] = {}
    for q in quantities:
        if q.required or draw(st.booleans()):
            values[q.name] = draw(_good(q))
    names = [q.name for q in quantities]
    if "field" in faults:
        q = draw(st.sampled_from(quantities))
        values[q.name] = draw(_bad(q))
    if "omit" in faults and values:
        del values[draw(st.sampled_from(sorted(values)))]
    if "null" in faults:
        values[draw(st.sampled_from(names))] = None
    if "extra" in faults:
        values[draw(st.sampled_from(["extra", "seq", "ts"]))] = 1
    return values


def _body(draw: st.DrawFn, values: dict[str, Any], faults: set[str]) -> dict[str, Any]:
    """The envelope around `values`, with its faults."""
    body: dict[str, Any] = {
        "ts": draw(_BAD_TS if "ts" in faults else _GOOD_TS),
        "seq": draw(
            st.one_of(
                st.integers(min_value=-5, max_value=2**64),
                st.booleans(),
                st.floats(allow_nan=False, allow_infinity=False),
            )
            if "seq" in faults
            else st.integers(min_value=0, max_value=2**63 - 1)
        ),
        "values": values,
    }
    if "envelope" in faults:
        if draw(st.booleans()):
            del body[draw(st.sampled_from(["ts", "seq", "values"]))]
        else:
            body["extra"] = 0
    return body


def _text_faults(draw: st.DrawFn, text: str, keys: list[str], faults: set[str]) -> str:
    """`text` with the faults of the JSON text: repeated keys, truncation, odd numbers."""
    if "repeat" in faults:  # a repeated key, the first value other
        name = draw(st.sampled_from(keys))
        text = text.replace(f'"{name}":', f'"{name}":0,"{name}":', 1)
    if "repeat_blank" in faults:  # the same, hidden behind a blank before the colon
        name = draw(st.sampled_from(keys))
        text = text.replace(f'"{name}":', f'"{name}" :1,"{name}":', 1)
    if "repeat_escaped" in faults:  # the same, spelled with an escape
        name = draw(st.sampled_from(keys))
        escaped = f"\\u{ord(name[0]):04x}" + name[1:]
        text = text.replace(f'"{name}":', f'"{name}":0,"{escaped}":', 1)
    if "truncate" in faults:
        text = text[: draw(st.integers(0, len(text)))]
    if "blanks" in faults:
        text = text.replace(":", ": ")
    if "overflow" in faults:
        text = text.replace("1", "1e999", 1)
    if "digit" in faults:
        text = text.replace("0", "\u0660", 1)  # a non-ASCII digit
    return text


@st.composite
def telemetry(draw: st.DrawFn) -> tuple[str, bytes]:
    """A kind and a payload near its contract: a valid reading with none, one or two faults."""
    kind = draw(st.sampled_from(KINDS))
    quantities = catalogue.telemetry_quantities(kind)
    faults = set(draw(st.lists(st.sampled_from(_FAULTS), max_size=2)))
    values = _values(draw, list(quantities), faults)
    body = _body(draw, values, faults)
    text = json.dumps(body, separators=(",", ":"), allow_nan=True)
    text = _text_faults(draw, text, ["ts", "seq", *sorted(values)], faults)
    raw = text.encode()
    if "utf8" in faults:
        raw = raw[:-1] + b"\xff" + raw[-1:]
    if "large" in faults:
        raw = raw[:-1] + b" " * draw(st.integers(8000, 8300)) + raw[-1:]
    return kind, raw


@settings(max_examples=500, deadline=None)
@given(telemetry())
def test_fast_path_accepts_only_what_the_contract_accepts(case: tuple[str, bytes]) -> None:
    _same_decision(*case)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(KINDS), st.binary(max_size=300))
def test_fast_path_accepts_no_arbitrary_bytes_the_contract_refuses(kind: str, raw: bytes) -> None:
    _same_decision(kind, raw)


def test_fast_path_takes_every_simulated_reading() -> None:
    """Not vacuous: every compact reading of the city's simulators goes the fast way."""
    rng = random.Random(7)
    taken = 0
    for i, device in enumerate(d for d in default_city().devices if d.kind in catalogue.KINDS):
        ts = NOW - timedelta(seconds=i)
        for seq in range(3):
            body = {"ts": format_ts(ts), "seq": seq, "values": generate(device, rng, ts)}
            payload = json.dumps(body, separators=(",", ":")).encode()
            assert _same_decision(device.kind, payload), payload
            taken += 1
    assert taken > 300


def test_window_edges_are_the_contracts_to_the_millisecond() -> None:
    """Both bounds, as epoch ms and as text: the fast path takes exactly what `parse` takes."""
    low, high = NOW - PAST, NOW + FUTURE
    values = {"laeq": 55.0, "lamax": 65.5, "la90": 40.25}
    for edge in (low, high):
        edge_ms = int(edge.timestamp() * 1000)
        for delta in range(-3, 4):
            ms = edge_ms + delta
            for ts in (ms, format_epoch_ms(ms)):
                body = {"ts": ts, "seq": 1, "values": values}
                payload = json.dumps(body, separators=(",", ":")).encode()
                accepted = isinstance(_slow("noise", payload), Reading)
                assert _same_decision("noise", payload) == accepted, (ts, accepted)
