"""Fuzzing the API's reading back of what devices sent: every event the ingest accepts is
one the API can render, and the dead-letter index reads any store (never raises)."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

from devicebytes import EVENTS, FUZZ, PAYLOADS, TOPICS
from hypothesis import given
from hypothesis import strategies as st

from api.routes.events import event_out
from ingest.deadletter import DeadLetterStore, dead_letter
from ingest.validate import Accepted, Rejected, Validator
from safecity.deadletters import DeadLetterIndex, store_path
from safecity.lineprotocol import decode
from safecity.registry import default_city

CITY = default_city()
VALIDATOR = Validator(CITY, 7 * 86_400, 300)


@FUZZ
@given(event=EVENTS)
def test_every_accepted_event_renders_in_the_api(event: tuple[str, bytes]) -> None:
    topic, payload = event
    outcome = VALIDATOR.validate(topic, payload, datetime.now(UTC))
    if isinstance(outcome, Rejected):
        return
    assert isinstance(outcome, Accepted)
    point = decode(outcome.line)
    # The row as InfluxDB answers it (epoch=ms; an event's line is written in ns, with its
    # sub-millisecond offset): time, the tags and the fields side by side.
    row = {"time": point.time_ms // 1_000_000, **point.tags, **point.fields}
    out = event_out(row)
    assert out.device_id == point.tags["device_id"] and out.seq == point.fields["seq"]
    out.model_dump_json()  # the response body: never a serialisation error


@FUZZ
@given(
    letters=st.lists(st.tuples(TOPICS, PAYLOADS), min_size=1, max_size=4),
    junk=st.lists(st.binary(max_size=200), max_size=3),
)
def test_the_delivery_index_reads_any_dead_letter_store(
    letters: list[tuple[str, bytes]], junk: list[bytes]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = DeadLetterStore(Path(tmp))
        store.open()
        for topic, payload in letters:
            outcome = VALIDATOR.validate(topic, payload, datetime.now(UTC))
            if isinstance(outcome, Rejected):
                store.append_many([dead_letter(outcome.rejection, topic, payload, "w")])
        with store.path.open("ab") as handle:
            handle.write(b"\n".join(junk))  # torn or foreign lines
        index = DeadLetterIndex(store_path(Path(tmp)))
        for topic, _ in letters:
            parts = topic.split("/")
            counts = index.rejected(parts[5] if len(parts) > 5 else "", 0, 2**62)
            assert all(isinstance(n, int) and n > 0 for n in counts.values())
