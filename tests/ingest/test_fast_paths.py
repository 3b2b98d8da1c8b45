"""The ingest's fast paths give exactly what the reference code gives.

- `_BulkReadClient.feed` (bulk socket reads, PUBLISH decoded by `safecity.mqtt.wire`
  without paho's per-message machinery) yields the same messages, in the same order, as paho's own
  `decode_publish`, however the byte stream is cut into reads;
- `lineprotocol.encode` (memoised series and field keys) gives the same line, or the
  same error, as the straightforward encoder it replaced.
"""

from __future__ import annotations

import logging
import math
import re
import struct
from collections.abc import Mapping
from typing import Any

import paho.mqtt.client as paho
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest.settings import IngestSettings
from safecity.errors import LineProtocolError
from safecity.lineprotocol import INT64_MAX, INT64_MIN, FieldValue, Point, encode
from safecity.mqtt import MqttClient, bulkread, wire
from safecity.settings import MqttSettings

# --- bulk PUBLISH decoding ---------------------------------------------------------


@st.composite
def publishes(draw: st.DrawFn) -> tuple[int, bytes, str, bytes, int, int, bool, bool]:
    topic = draw(st.text(min_size=1, max_size=80).filter(lambda t: "\x00" not in t))
    payload = draw(st.binary(max_size=600))
    qos = draw(st.integers(0, 1))
    mid = draw(st.integers(1, 65535)) if qos else 0
    dup, retain = draw(st.booleans()), draw(st.booleans())
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if draw(st.booleans()):
        props.UserProperty = [("k", draw(st.text(alphabet="abc xyz", max_size=200)))]
    if draw(st.booleans()):
        props.MessageExpiryInterval = draw(st.integers(0, 2**32 - 1))
    raw_topic = topic.encode()
    body = struct.pack("!H", len(raw_topic)) + raw_topic
    if qos:
        body += struct.pack("!H", mid)
    body += props.pack() + payload
    command = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    return command, body, topic, payload, qos, mid, dup, retain


def _client(received: list[tuple[Any, ...]]) -> bulkread._BulkReadClient:
    return bulkread._BulkReadClient(
        CallbackAPIVersion.VERSION2,
        client_id="test-feed",
        protocol=paho.MQTTv5,
        manual_ack=True,
        sink=received.extend,
    )


PINGRESP = b"\xd0\x00"


@settings(max_examples=200, deadline=None)
@given(
    packets=st.lists(publishes(), min_size=1, max_size=30),
    pings=st.sets(st.integers(0, 30)),
    cuts=st.lists(st.integers(1, 400), max_size=60),
)
def test_bulk_read_decodes_like_paho_for_any_read_boundaries(
    packets: list[tuple[int, bytes, str, bytes, int, int, bool, bool]],
    pings: set[int],
    cuts: list[int],
) -> None:
    assert bulkread.bulk_read_supported()
    stream = b""
    expected = []
    for index, (command, body, *_) in enumerate(packets):
        if index in pings:
            stream += PINGRESP  # handled by paho itself, in between
        stream += wire.frame(command >> 4, command & 0x0F, body)
        ref = _packet.decode_publish(command, body, MQTTProtocolVersion.MQTTv5)
        expected.append(
            (ref.topic.decode(), bytes(ref.payload), ref.qos, ref.mid, ref.retain, ref.dup)
        )
    received: list[tuple[Any, ...]] = []
    client = _client(received)
    pos = 0
    for cut in [*cuts, len(stream)]:
        chunk = stream[pos : pos + cut]
        pos += len(chunk)
        if chunk:
            assert client.feed(chunk) == MQTTErrorCode.MQTT_ERR_SUCCESS
    if pos < len(stream):
        client.feed(stream[pos:])
    assert received == expected
    assert client._rbuf == b""
    # And the fields the ingest reads, from the packet's own bits.
    for (_, _, topic, payload, qos, mid, dup, retain), got in zip(packets, received, strict=True):
        assert got == (topic, payload, qos, mid, retain, dup)


def test_bulk_read_refuses_a_remaining_length_over_four_bytes() -> None:
    received: list[tuple[Any, ...]] = []
    client = _client(received)
    rc = client.feed(b"\x30\xff\xff\xff\xff\x01")
    assert rc == MQTTErrorCode.MQTT_ERR_PROTOCOL
    assert received == []


# --- line protocol -----------------------------------------------------------------

_MEASUREMENT_ESC = str.maketrans({",": r"\,", " ": r"\ "})
_KEY_ESC = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_STR_ESC = str.maketrans({'"': r"\"", "\\": "\\\\"})
_FORBIDDEN = re.compile(r"[\n\r\x00]")
_FORBIDDEN_NAME = re.compile(r"[\n\r\x00\\]")


def _ref_name(value: str, what: str) -> str:
    if not value:
        raise LineProtocolError(f"empty {what}")
    if _FORBIDDEN_NAME.search(value):
        raise LineProtocolError(f"{what} {value[:40]!r} contains a newline, NUL or backslash")
    return value


def _ref_field(value: FieldValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise LineProtocolError(f"integer {value} does not fit int64")
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LineProtocolError(f"non-finite float {value}")
        return repr(value)
    if isinstance(value, str):
        if _FORBIDDEN.search(value):
            raise LineProtocolError(f"string field {value[:40]!r} contains a newline or NUL")
        return '"' + value.translate(_STR_ESC) + '"'
    raise LineProtocolError(f"unsupported field type {type(value).__name__}")


def reference_encode(point: Point) -> str:
    """The encoder as it was before the memoised one (the behaviour to keep)."""
    if not point.fields:
        raise LineProtocolError("a point needs at least one field")
    if point.measurement.startswith("#"):
        raise LineProtocolError(f"measurement {point.measurement[:40]!r} starts with '#'")
    if "time" in point.tags or "time" in point.fields:
        raise LineProtocolError("'time' is not a valid tag or field key in InfluxDB")
    parts = [_ref_name(point.measurement, "measurement").translate(_MEASUREMENT_ESC)]
    for key in sorted(point.tags):
        value = point.tags[key]
        if value == "":
            continue
        tag_key = _ref_name(key, "tag key").translate(_KEY_ESC)
        parts.append(f"{tag_key}={_ref_name(value, 'tag value').translate(_KEY_ESC)}")
    fields = ",".join(
        f"{_ref_name(k, 'field key').translate(_KEY_ESC)}={_ref_field(v)}"
        for k, v in sorted(point.fields.items())
    )
    return f"{','.join(parts)} {fields} {point.time_ms}"


# Small alphabets with every special character, so collisions and escapes are common.
_names = st.text(alphabet='ab ,=\\\n"#tim', max_size=6)
_values: st.SearchStrategy[FieldValue] = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet='ab \\"\n\r\x00,=', max_size=6),
)


def _outcome(fn: Any, point: Point) -> tuple[str, str]:
    try:
        return ("ok", fn(point))
    except LineProtocolError as exc:
        return ("error", str(exc))


@settings(max_examples=150, deadline=None)
@given(
    measurement=st.one_of(st.sampled_from(["air_quality", "noise", "events"]), _names),
    tags=st.dictionaries(
        st.one_of(st.sampled_from(["city", "district", "device_id"]), _names),
        st.one_of(st.sampled_from(["", "d1", "dev-1"]), _names),
        max_size=4,
    ),
    fields=st.dictionaries(
        st.one_of(st.sampled_from(["seq", "pm25", "laeq"]), _names), _values, max_size=4
    ),
    time_ms=st.integers(0, 2**45),
)
def test_encode_matches_the_reference_encoder(
    measurement: str, tags: Mapping[str, str], fields: Mapping[str, FieldValue], time_ms: int
) -> None:
    point = Point(measurement, tags, fields, time_ms)
    # Twice: the second call is served from the memoised series/field keys.
    assert _outcome(encode, point) == _outcome(reference_encode, point)
    assert _outcome(encode, point) == _outcome(reference_encode, point)


# --- the fast path's start-up check of paho's internals ----------------------------


class _NoPacketHandle(paho.Client):
    _packet_handle = None  # type: ignore[assignment]


class _NoInPacket(paho.Client):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self._in_packet


class _OtherPacketQueue(paho.Client):
    def _packet_queue(self, *args: Any) -> MQTTErrorCode:  # type: ignore[override]
        return MQTTErrorCode.MQTT_ERR_SUCCESS


@pytest.mark.parametrize(
    ("crippled", "named"),
    [
        (_NoPacketHandle, "_packet_handle"),
        (_NoInPacket, "_in_packet"),
        (_OtherPacketQueue, "_packet_queue(command)"),
    ],
)
def test_a_paho_lacking_an_internal_is_refused_and_stock_paho_used(
    crippled: type[paho.Client], named: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert named in bulkread.missing_internals(crippled)
    assert not bulkread.bulk_read_supported(crippled)
    with caplog.at_level(logging.WARNING, logger="safecity.mqtt"):
        assert bulkread.client_class(True, crippled) is crippled
    assert any(
        "stock per-message receive path" in r.getMessage() and named in r.getMessage()
        for r in caplog.records
    )


def test_the_installed_paho_has_every_internal_and_the_setting_turns_the_path_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert bulkread.missing_internals() == ()
    assert bulkread.client_class(True) is bulkread._BulkReadClient
    assert bulkread.client_class(False) is paho.Client
    assert MqttClient(MqttSettings(), "fast-on").fast_path
    assert not MqttClient(MqttSettings(fast_path=False), "fast-off").fast_path
    monkeypatch.setenv("SAFECITY_MQTT__FAST_PATH", "false")
    assert IngestSettings().mqtt.fast_path is False
