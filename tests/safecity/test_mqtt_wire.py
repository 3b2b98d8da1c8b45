"""The MQTT wire codec: every encoder round-trips through its parser, and agrees with paho.

paho's own decoder is the independent reference for PUBLISH; the rest round-trips.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from safecity.mqtt import wire

texts = st.text(max_size=60).filter(lambda t: "\x00" not in t)
topics = texts.filter(bool)


@given(st.integers(0, wire.MAX_VARINT))
def test_varint_round_trips_in_one_to_four_bytes(n: int) -> None:
    data = wire.encode_varint(n)
    assert 1 <= len(data) <= 4
    assert wire.decode_varint(b"junk" + data + b"tail", 4) == (n, 4 + len(data))
    # Any strict prefix is incomplete, never a wrong value.
    for cut in range(len(data)):
        assert wire.decode_varint(data[:cut], 0) is None


def test_varint_limits_are_errors() -> None:
    with pytest.raises(wire.WireError, match="out of range"):
        wire.encode_varint(wire.MAX_VARINT + 1)
    with pytest.raises(wire.WireError, match="out of range"):
        wire.encode_varint(-1)
    with pytest.raises(wire.WireError, match="longer than four bytes"):
        wire.decode_varint(b"\xff\xff\xff\xff\x01", 0)


@given(texts)
def test_utf8_string_round_trips(text: str) -> None:
    data = wire.encode_utf8(text)
    assert wire.decode_utf8(b"x" + data, 1) == (text, 1 + len(data))


def test_utf8_string_errors_name_the_reason() -> None:
    with pytest.raises(wire.WireError, match="exceeds 65535"):
        wire.encode_utf8("a" * 65536)
    with pytest.raises(wire.WireError, match="truncated string"):
        wire.decode_utf8(b"\x00\x05abc", 0)
    with pytest.raises(wire.WireError, match="not UTF-8"):
        wire.decode_utf8(b"\x00\x01\xff", 0)


@given(
    client_id=texts,
    username=st.none() | texts,
    password=texts,
    keepalive=st.integers(0, 65535),
    clean_start=st.booleans(),
)
def test_connect_round_trips(
    client_id: str, username: str | None, password: str, keepalive: int, clean_start: bool
) -> None:
    secret = password if username is not None else None
    data = wire.connect(client_id, username, secret, keepalive=keepalive, clean_start=clean_start)
    packet, used = wire.take_packet(data) or (None, 0)
    assert packet is not None and used == len(data)
    assert packet.kind == wire.CONNECT
    assert wire.parse_connect(packet.body) == wire.Connect(
        client_id, username, secret, keepalive, clean_start
    )


@given(st.integers(0, 255), st.booleans())
def test_connack_round_trips(reason: int, session_present: bool) -> None:
    got = wire.take_packet(wire.connack(reason, session_present))
    assert got is not None
    assert wire.parse_connack(got[0].body) == (session_present, reason)
    assert got[0].reason == reason


@st.composite
def properties(draw: st.DrawFn) -> bytes:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if draw(st.booleans()):
        props.UserProperty = [("k", draw(st.text(alphabet="abc xyz", max_size=300)))]
    if draw(st.booleans()):
        props.MessageExpiryInterval = draw(st.integers(0, 2**32 - 1))
    return bytes(props.pack())


@settings(max_examples=100, deadline=None)
@given(
    topic=topics,
    payload=st.binary(max_size=400),
    qos=st.integers(0, 1),
    mid=st.integers(1, 65535),
    retain=st.booleans(),
    dup=st.booleans(),
    props=properties(),
)
def test_publish_round_trips_and_paho_reads_the_same(
    topic: str, payload: bytes, qos: int, mid: int, retain: bool, dup: bool, props: bytes
) -> None:
    mid = mid if qos else 0
    data = wire.publish(topic, payload, qos=qos, mid=mid, retain=retain, dup=dup, properties=props)
    got = wire.take_packet(data + b"\xd0")  # a following, incomplete packet stays
    assert got is not None and got[1] == len(data)
    packet = got[0]
    assert packet.kind == wire.PUBLISH
    expected = wire.Publish(topic, payload, qos, mid, retain, dup)
    assert wire.parse_publish(packet.flags, packet.body) == expected
    ref = _packet.decode_publish(data[0], packet.body, MQTTProtocolVersion.MQTTv5)
    assert (ref.topic.decode(), bytes(ref.payload), ref.qos, ref.mid, ref.retain, ref.dup) == (
        topic,
        payload,
        qos,
        mid,
        retain,
        dup,
    )


@given(st.integers(0, 65535), st.integers(0, 255))
def test_puback_round_trips(mid: int, reason: int) -> None:
    got = wire.take_packet(wire.puback(mid, reason))
    assert got is not None
    assert wire.parse_puback(got[0].body) == (mid, reason)


@given(st.lists(st.integers(0, 65535), max_size=20))
def test_a_run_of_pubacks_is_the_single_pubacks_back_to_back(mids: list[int]) -> None:
    assert wire.pubacks(mids) == b"".join(wire.puback(m) for m in mids)


@given(
    st.integers(1, 65535),
    st.lists(st.tuples(topics, st.integers(0, 0x3F)), min_size=1, max_size=8),
)
def test_subscribe_and_suback_round_trip(mid: int, filters: list[tuple[str, int]]) -> None:
    got = wire.take_packet(wire.subscribe(mid, filters))
    assert got is not None
    assert (got[0].kind, got[0].flags) == (wire.SUBSCRIBE, 0x02)
    assert wire.parse_subscribe(got[0].body) == (mid, filters)
    reasons = [options & 0x03 for _, options in filters]
    ack = wire.take_packet(wire.suback(mid, reasons))
    assert ack is not None
    assert wire.parse_suback(ack[0].body) == (mid, reasons)


@given(st.integers(0, 255))
def test_disconnect_round_trips(reason: int) -> None:
    got = wire.take_packet(wire.disconnect(reason))
    assert got is not None
    assert got[0].kind == wire.DISCONNECT and got[0].reason == reason


def test_malformed_bodies_are_refused_with_a_reason() -> None:
    with pytest.raises(wire.WireError, match="not an MQTT v5 CONNECT"):
        wire.parse_connect(wire.encode_utf8("MQIsdp") + b"\x03\x02\x00\x0a")
    with pytest.raises(wire.WireError, match="QoS 0/1 PUBLISH"):
        wire.parse_publish(0x04, wire.encode_utf8("a/b") + b"\x00\x01\x00")
    with pytest.raises(wire.WireError, match="truncated PUBACK"):
        wire.parse_puback(b"\x01")
    with pytest.raises(wire.WireError, match="a password needs a username"):
        wire.connect("c", None, "secret")
