"""Hypothesis strategies for what a device can send: payloads, topics, MQTT v5 properties.

Structure-aware: JSON text is generated as text (so duplicate keys at any level, every
JSON whitespace, lone-surrogate escapes and huge exponents are reachable), mixed with
near-valid readings and events of real registry devices (to get past the first checks)
and raw bytes (invalid UTF-8, NUL bytes). `FUZZ` is the budget: `SAFECITY_FUZZ_EXAMPLES`
examples per test (small in `make test`; see docs/testing.md for the long run).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from safecity import catalogue
from safecity.readings import format_ts
from safecity.registry import default_city

CITY = default_city()
# A few devices of every kind: readings and events of each reach their own decoders.
DEVICES = [d for kind in sorted(catalogue.KINDS) for d in CITY.select(kind=kind)[:3]]

FUZZ = settings(
    max_examples=int(os.environ.get("SAFECITY_FUZZ_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize="SAFECITY_FUZZ_EXAMPLES" not in os.environ,
)
"""Per-test budget: fixed examples in `make test` (derandomized: a run is repeatable),
random and as many as asked with SAFECITY_FUZZ_EXAMPLES."""

WHITESPACE = st.sampled_from(["", " ", "\t", "\n", "\r", " \t\r\n "])
EDGE_INTS = st.sampled_from(
    [0, -1, 1, 2**31 - 1, 2**31, 2**53, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1,
     2**64 - 1, 2**64, 10**30, -(10**30)]
)  # fmt: skip
NUMBER_TEXT = st.one_of(
    EDGE_INTS.map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(
        ["1e999999", "-1e400", "1E+308", "2e-400", "0.0000000000000000000001", "-0", "1.5e308",
         "4.9e-324", "1" * 4300, "1" * 5000, "123456789012345678901234567890.5", "1e-999999"]
    ),
)  # fmt: skip
STRING_TEXT = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=()), max_size=40).map(json.dumps),
    st.sampled_from(
        ['"\\ud800"', '"\\udfff"', '"\\ud800\\u0041"', '"\\u0000"', '"a\\u0000b"', '"\\uDBFF"',
         '"\x00"', '"\\"', '"\\x41"', '"\\u12"', '"plate ABC123"', '"\\ud83d\\ude00"']
    ),
)  # fmt: skip
KEYS = st.one_of(
    st.sampled_from(["ts", "seq", "values", "type", "severity", "details", "state", "reason",
                     "laeq", "lamax", "la90", "pm25", "plate", "plate_hash", "zone", ""]),
    st.text(max_size=12),
    st.integers(200, 8000).map(lambda n: "k" * n),
)  # fmt: skip


def _obj(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    def build(pairs: list[tuple[str, str]], ws: str, dup: bool) -> str:
        items = [f"{ws}{json.dumps(k)}{ws}:{ws}{v}{ws}" for k, v in pairs]
        if dup and pairs:  # the same key again at this level
            items.append(f"{json.dumps(pairs[0][0])}:{pairs[-1][1]}")
        return "{" + ",".join(items) + "}"

    return st.builds(
        build, st.lists(st.tuples(KEYS, children), max_size=5), WHITESPACE, st.booleans()
    )


JSON_TEXT = st.recursive(
    st.one_of(NUMBER_TEXT, STRING_TEXT, st.sampled_from(["true", "false", "null", "NaN",
                                                         "Infinity", "-Infinity"])),
    lambda children: st.one_of(
        _obj(children),
        st.builds(lambda xs, ws: "[" + f",{ws}".join(xs) + "]", st.lists(children, max_size=5),
                  WHITESPACE),
    ),
    max_leaves=30,
)  # fmt: skip

NESTED = st.builds(
    lambda n, kind: {"array": "[" * n + "]" * n, "object": '{"a":' * n + "1" + "}" * n,
                     "open": "[" * n, "mixed": '[{"a":' * n + "1" + "}]" * n}[kind],
    st.sampled_from([2, 50, 500, 900, 990, 1000, 1100, 2000, 2700, 4000]),
    st.sampled_from(["array", "object", "open", "mixed"]),
)  # fmt: skip


def _near_valid(device_index: int, seq: int, offset_s: int, values: dict, ws: str) -> str:
    """A reading of a registry device with fuzzed seq, time and values."""
    device = DEVICES[device_index % len(DEVICES)]
    quantities = catalogue.KINDS[device.kind].quantities
    body = {q.name: values.get(q.name, 1) for q in quantities if q.required}
    body.update(values)
    ts = format_ts(datetime.now(UTC) - timedelta(seconds=offset_s))
    return json.dumps({"ts": ts, "seq": seq, "values": body}, separators=("," + ws, ":" + ws))


NEAR_VALID = st.builds(
    _near_valid,
    st.integers(0, 10_000),
    st.one_of(EDGE_INTS, st.integers(0, 10)),
    st.sampled_from([0, 1, 60, 86_400 * 8, -3600, -(10**6)]),
    st.dictionaries(
        st.sampled_from(["laeq", "lamax", "la90", "pm25", "occupied", "count", "x"]),
        st.one_of(EDGE_INTS, st.floats(), st.text(max_size=5), st.none(), st.booleans()),
        max_size=3,
    ),
    WHITESPACE,
)

PAYLOADS = st.one_of(
    NEAR_VALID.map(str.encode),
    JSON_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
    NESTED.map(str.encode),
    st.binary(max_size=600),
    st.tuples(JSON_TEXT, st.binary(max_size=8)).map(lambda p: p[0].encode() + p[1]),
    st.integers(8000, 9000).map(lambda n: b'{"seq":1,"x":"' + b"a" * n + b'"}'),
)


def _device_topic(index: int, channel: str) -> str:
    device = DEVICES[index % len(DEVICES)]
    return f"safecity/v1/{CITY.id}/{device.district}/{device.kind}/{device.id}/{channel}"


TOPICS = st.one_of(
    st.builds(_device_topic, st.integers(0, 10_000), st.sampled_from(["telemetry", "event",
                                                                        "status", "ack", "x"])),
    st.lists(st.text(st.characters(codec=None, exclude_categories=()), max_size=12),
             min_size=1, max_size=9).map("/".join),
    st.builds(lambda t, junk: t + junk, st.builds(_device_topic, st.integers(0, 99),
                                                  st.just("telemetry")),
              st.sampled_from(["/", "/#", "\x00", "\ufffd", "//", "/+"])),
)  # fmt: skip
"""Device topics (real and fuzzed) and arbitrary text (lone surrogates included)."""


def _property(ident: int, value: bytes) -> bytes:
    return bytes([ident]) + value


def _sized(value: bytes) -> bytes:
    return len(value).to_bytes(2, "big") + value


def _be(width: int) -> st.SearchStrategy[bytes]:
    return st.integers(0, 2 ** (8 * width) - 1).map(lambda v: v.to_bytes(width, "big"))


PROPERTIES = st.lists(
    st.one_of(
        st.builds(_property, st.sampled_from([0x01, 0x17, 0x19, 0x24, 0x25]),
                  st.integers(0, 255).map(lambda b: bytes([b]))),
        st.builds(_property, st.just(0x23), _be(2)),
        st.builds(_property, st.just(0x02), _be(4)),
        st.builds(_property, st.sampled_from([0x03, 0x08, 0x09]),
                  st.binary(max_size=20).map(_sized)),
        st.builds(lambda k, v: b"\x26" + _sized(k) + _sized(v),
                  st.binary(max_size=10), st.binary(max_size=10)),
        st.binary(max_size=6),  # junk
    ),
    max_size=6,
).map(b"".join)  # fmt: skip
"""The bytes of an MQTT v5 PUBLISH property block (without its length), well-formed or not."""


EMITTERS = [d for d in DEVICES if catalogue.KINDS[d.kind].emits_events]
DETAIL_VALUES = st.one_of(
    EDGE_INTS, st.floats(), st.booleans(), st.none(),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=30),
    st.sampled_from(["ABC123", "a" * 300, "\x00", "zone-1", "north", "\ud800", "1e999"]),
)  # fmt: skip


def _event(index: int, pick: int, severity: str, details: dict, offset_ms: int, seq: int) -> tuple:
    """(topic, payload) of an event of a registry device with fuzzed details."""
    device = EMITTERS[index % len(EMITTERS)]
    emits = catalogue.KINDS[device.kind].emits_events
    event = catalogue.EVENT_TYPES[emits[pick % len(emits)]]
    body = {q.name: details.pop(q.name, q.low) for q in event.details if q.required}
    body.update(details)
    ts = format_ts(datetime.now(UTC) - timedelta(milliseconds=offset_ms))
    text = json.dumps({"ts": ts, "seq": seq, "type": event.name, "severity": severity,
                       "details": body})  # fmt: skip
    topic = f"safecity/v1/{CITY.id}/{device.district}/{device.kind}/{device.id}/event"
    return topic, text.encode("utf-8", "surrogatepass")


EVENTS = st.builds(
    _event,
    st.integers(0, 10_000),
    st.integers(0, 5),
    st.sampled_from(["info", "low", "medium", "high", "critical", "x"]),
    st.dictionaries(
        st.sampled_from(
            sorted({q.name for e in catalogue.EVENT_TYPES.values() for q in e.details})
        ),
        DETAIL_VALUES,
        max_size=4,
    ),
    st.integers(0, 10**6),
    st.one_of(EDGE_INTS, st.integers(0, 1000)),
)
"""(topic, payload) of near-valid events: real devices and types, fuzzed details."""
