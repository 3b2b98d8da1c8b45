"""Acks of what a worker made durable: seq ranges per device, split across workers, parsed back."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from ingest.validate import Validator
from ingest.watermark import Watermarks
from safecity import acks, topics
from safecity.errors import TopicError
from safecity.mqtt import Incoming
from safecity.registry import default_city

CITY = default_city()
DEVICE = CITY.select(kind="noise")[0]
TOPIC = topics.telemetry_topic(CITY.id, DEVICE.district, DEVICE.kind, DEVICE.id)


def incoming(seq: int, payload: bytes | None = None) -> Incoming:
    """A reading `seq` seconds before now (the time it is made, within the window)."""
    body = {
        "ts": (datetime.now(UTC) - timedelta(seconds=seq)).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "seq": seq,
        "values": {"laeq": 55.0, "lamax": 65.0, "la90": 47.0},
    }
    return Incoming(TOPIC, payload or json.dumps(body).encode(), 1, seq, False, False, 0)


def test_two_workers_each_ack_their_share_and_the_union_is_everything() -> None:
    validator = Validator(CITY, 86_400, 300)
    workers = [Watermarks(CITY), Watermarks(CITY)]
    for seq in range(100):
        message = incoming(seq)
        workers[seq % 2].add_batch([(message, validator.validate(message.topic, message.payload))])
    # A rejected message with a readable seq is accounted for (dead-lettered) too.
    bad = incoming(500, json.dumps({"seq": 500, "values": {}}).encode())
    workers[0].add_batch([(bad, validator.validate(bad.topic, bad.payload))])
    union: set[int] = set()
    for worker in workers:
        drained = worker.drain()
        assert [t for t, _ in drained] == [topics.ack_topic(CITY.id, DEVICE.district,
                                                            DEVICE.kind, DEVICE.id)]  # fmt: skip
        ack = acks.Ack.from_payload(drained[0][1])
        assert ack.event == ()
        for first, last in ack.telemetry:
            union.update(range(first, last + 1))
        assert worker.drain() == []  # forgotten once published
    assert union == set(range(100)) | {500}


def test_ranges_collapse_and_large_acks_are_split() -> None:
    assert acks.to_ranges([5, 3, 4, 4, 9, 10, 1]) == [(1, 1), (3, 5), (9, 10)]
    parts = acks.split(acks.to_ranges(range(0, 3000, 2)), [(7, 7)])
    assert len(parts) == 3 and all(
        len(p.telemetry) + len(p.event) <= acks.MAX_RANGES for p in parts
    )
    assert sum(p.count for p in parts) == 1501
    assert acks.Ack.from_payload(parts[-1].to_payload()) == parts[-1]
    with pytest.raises(acks.AckError, match="bad seq range"):
        acks.Ack.from_payload(b'{"telemetry": [[5, 1]]}')
    with pytest.raises(acks.AckError):
        acks.Ack.from_payload(b'{"telemetry": [], "other": 1}')


def test_ack_topic_builds_and_parses() -> None:
    topic = topics.ack_topic("tashkent", "chilonzor", "noise", "noise-1")
    assert topic == "safecity/v1/tashkent/chilonzor/noise/noise-1/ack"
    assert str(topics.parse_ack_topic(topic)) == topic
    with pytest.raises(TopicError):
        topics.parse_ack_topic("safecity/v1/tashkent/chilonzor/noise/noise-1/telemetry")
    with pytest.raises(TopicError):
        topics.ack_topic("tashkent", "chilonzor", "noise", "+")


def test_a_refused_message_is_acked_by_the_seq_validation_read_and_never_decoded_again() -> None:
    validator = Validator(CITY, 86_400, 300)
    marks = Watermarks(CITY)
    depth = 4_000  # far past the interpreter's recursion limit, under the size limit
    nested = incoming(0, b"[" * depth + b"]" * depth)
    numbered = incoming(7, json.dumps({"seq": 7, "values": {}}).encode())
    batch = [(m, validator.validate(m.topic, m.payload)) for m in (nested, numbered)]
    outcomes = [o for _, o in batch]
    assert [o.rejection.reason for o in outcomes] == ["bad_json", "schema"]  # type: ignore[union-attr]
    assert [o.seq for o in outcomes] == [None, 7]
    marks.add_batch(batch)  # a second decode of the nested payload raised RecursionError here
    ((_, payload),) = marks.drain()
    assert acks.Ack.from_payload(payload).telemetry == ((7, 7),)
