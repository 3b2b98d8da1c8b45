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
from safecity.mqtt.messages import Will

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


wills = st.none() | st.builds(
    Will, topics, st.binary(max_size=200), st.integers(0, 2), st.booleans()
)


@given(
    client_id=texts,
    username=st.none() | texts,
    session_expiry=st.integers(0, 2**32 - 1),
    will=wills,
    clean_start=st.booleans(),
)
def test_connect_with_will_and_session_expiry_round_trips(
    client_id: str, username: str | None, session_expiry: int, will: Will | None, clean_start: bool
) -> None:
    data = wire.connect(
        client_id, username, None, clean_start=clean_start, session_expiry=session_expiry,
        will=will,
    )  # fmt: skip
    packet, used = wire.take_packet(data) or (None, 0)
    assert packet is not None and used == len(data)
    assert wire.parse_connect(packet.body) == wire.Connect(
        client_id, username, None, 30, clean_start, session_expiry, will
    )


# A property of each type: 4-, 2- and 1-byte integers, varint, string, binary.
PROPERTY_VALUES: dict[int, st.SearchStrategy[wire.Property]] = {
    wire.SESSION_EXPIRY: st.integers(0, 2**32 - 1),
    wire.SERVER_KEEPALIVE: st.integers(0, 0xFFFF),
    0x24: st.integers(0, 0xFF),
    0x0B: st.integers(0, wire.MAX_VARINT),
    0x1F: texts,
    0x09: st.binary(max_size=100),
}


@given(st.data())
def test_properties_round_trip(data: st.DataObject) -> None:
    idents = data.draw(st.lists(st.sampled_from(sorted(PROPERTY_VALUES)), unique=True))
    props = {ident: data.draw(PROPERTY_VALUES[ident]) for ident in idents}
    block = wire.encode_properties(props)
    assert wire.decode_properties(b"x" + block + b"tail", 1) == (props, 1 + len(block))


@given(keepalive=st.integers(0, 0xFFFF), reason=texts, user=st.tuples(texts, texts))
def test_paho_connack_properties_read_the_same(
    keepalive: int, reason: str, user: tuple[str, str]
) -> None:
    props = Properties(PacketTypes.CONNACK)  # type: ignore[no-untyped-call]
    props.ServerKeepAlive = keepalive
    props.ReasonString = reason
    props.UserProperty = [user]
    block = bytes(props.pack())
    got, end = wire.decode_properties(block, 0)
    # User properties are skipped, the rest read as paho wrote them.
    assert end == len(block)
    assert got == {wire.SERVER_KEEPALIVE: keepalive, 0x1F: reason}


@given(st.binary(max_size=80))
def test_any_bytes_as_properties_decode_or_fail_with_a_wire_error(data: bytes) -> None:
    try:
        props, end = wire.decode_properties(data, 0)
    except wire.WireError:
        return
    assert end <= len(data) and isinstance(props, dict)


def test_bad_properties_are_refused_with_a_reason() -> None:
    with pytest.raises(wire.WireError, match="unknown property 0x7f"):
        wire.decode_properties(b"\x02\x7f\x00", 0)
    with pytest.raises(wire.WireError, match="truncated property"):
        wire.decode_properties(b"\x02\x11\x00", 0)
    with pytest.raises(wire.WireError, match="out of range"):
        wire.encode_properties({wire.SERVER_KEEPALIVE: 70000})
    with pytest.raises(wire.WireError, match="wrong type"):
        wire.encode_properties({wire.SESSION_EXPIRY: "soon"})
    with pytest.raises(wire.WireError, match="will QoS 3"):
        wire.connect("c", will=Will("t", b"", 3))
    assert wire.PINGREQ_PACKET == b"\xc0\x00" and wire.PINGRESP_PACKET == b"\xd0\x00"
    assert wire.REASONS[0x87] == "Not authorized"
