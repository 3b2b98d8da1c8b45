"""Fuzzing every ingest path that touches device bytes: never raises, always an outcome.

Drives the real stages with `devicebytes` strategies: the MQTT v5 PUBLISH scan (topic,
properties), validation (one at a time and in bulk, rate limiter and duplicate memory
on), the acks' bookkeeping, the dead letter with its redaction, the store and both of
its readers (the replay's and the API's delivery index).
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from devicebytes import FUZZ, PAYLOADS, PROPERTIES, TOPICS
from hypothesis import given
from hypothesis import strategies as st

from ingest.deadletter import DeadLetterStore, dead_letter, record_payload
from ingest.redact import Redactor
from ingest.validate import Accepted, DeviceRateLimiter, DuplicateDetector, Rejected, Validator
from ingest.watermark import Watermarks
from safecity import acks, lineprotocol
from safecity.deadletters import DeadLetterIndex, store_path
from safecity.mqtt import Incoming, wire
from safecity.readings import RejectReason
from safecity.registry import default_city

CITY = default_city()
STRICT = Validator(
    CITY, 7 * 86_400, 300, rate_limiter=DeviceRateLimiter(50, 5), duplicates=DuplicateDetector(64)
)
PLAIN = Validator(CITY, 7 * 86_400, 300)
MARKS = Watermarks(CITY)
REDACTOR = Redactor(b"0" * 32)


def _check(outcome: object) -> None:
    """An outcome is a well-formed Accepted (its line decodes, and so do the lines of the
    point's twins riding with it: `schema.status_points`) or Rejected (a reason)."""
    if isinstance(outcome, Accepted):
        for line in outcome.line.split("\n"):
            assert lineprotocol.decode(line).time_ms == outcome.time_ms
        return
    assert isinstance(outcome, Rejected)
    assert outcome.rejection.reason in set(RejectReason)
    assert isinstance(outcome.rejection.detail, str)
    assert outcome.seq is None or 0 <= outcome.seq < 2**63


@FUZZ
@given(
    topic=TOPICS,
    payload=PAYLOADS,
    duplicate=st.booleans(),
    properties=PROPERTIES,
    qos=st.sampled_from([0, 1, 2, 3]),
)
def test_received_bytes_always_get_an_outcome(
    topic: str, payload: bytes, duplicate: bool, properties: bytes, qos: int
) -> None:
    # The wire: the inline PUBLISH scan with a fuzzed v5 property block.
    raw_topic = topic.encode("utf-8", "surrogatepass")[:0xFFFF]
    body = len(raw_topic).to_bytes(2, "big") + raw_topic + b"\x00\x07"[: 2 if qos else 0]
    body += wire.encode_varint(len(properties)) + properties + payload
    flags = qos << 1 | (0x08 if duplicate else 0)
    scanned = wire.scan_publish(body, 0, len(body), flags, True)
    if scanned is not None:
        topic_end, _, payload_start, got_qos = scanned
        assert topic_end <= payload_start <= len(body) and got_qos == qos
        topic = body[2:topic_end].decode("utf-8", "replace")
        payload = body[payload_start:]
    message = Incoming(topic, payload, min(qos, 1), 7, False, duplicate, 0)
    now = datetime.now(UTC)
    alone = PLAIN.validate(topic, payload, now)
    _check(alone)
    bulk = STRICT.validate_many([message, message], now)
    assert len(bulk) == 2
    for outcome in bulk:
        _check(outcome)
    # The acks' bookkeeping takes whatever validation made of it.
    MARKS.add_batch([(message, alone), *((message, o) for o in bulk)])
    for ack_topic, ack in MARKS.drain():
        assert acks.Ack.from_payload(ack).count >= 1 and ack_topic.endswith("/ack")


@FUZZ
@given(
    topic=TOPICS,
    payload=PAYLOADS,
    detail=st.text(st.characters(codec=None, exclude_categories=()), max_size=300),
)
def test_every_refusal_becomes_a_stored_redacted_dead_letter_both_readers_read(
    topic: str, payload: bytes, detail: str
) -> None:
    outcome = PLAIN.validate(topic, payload, datetime.now(UTC))
    rejection = outcome.rejection if isinstance(outcome, Rejected) else None
    if rejection is None:
        return
    letter = dead_letter(rejection, topic, payload, "w-fuzz", redactor=REDACTOR)
    fuzzed = dead_letter(
        type(rejection)(RejectReason.POISON, detail), topic, payload, "w", redactor=REDACTOR
    )
    with tempfile.TemporaryDirectory() as tmp:
        store = DeadLetterStore(Path(tmp))
        store.open()
        store.append_many([letter, fuzzed])
        records = store.read()
        assert [r["reason"] for r in records] == [rejection.reason.value, "poison"]
        for record in records:
            json.dumps(record)  # what the API and the topic carry: plain JSON
            assert len(record_payload(record)) <= len(letter.payload) or record["redacted"]
        index = DeadLetterIndex(store_path(Path(tmp)))
        parts = topic.split("/")
        counts = index.rejected(parts[5] if len(parts) > 5 else "", 0, 2**62)
        assert sum(counts.values()) in (0, 2)
