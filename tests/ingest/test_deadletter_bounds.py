"""Dead letters are bounded: a poison message yields one dead letter, never a reconnect loop;
personal fields never reach the store or the topic in clear."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from devicepub import publish_as
from faults import Ingest, new_db
from support import DeadLetterWatcher, wait_for

from control.stack import LocalStack
from ingest.deadletter import MAX_TOPIC, DeadLetterStore, dead_letter, publishable
from ingest.redact import Redactor
from safecity import topics
from safecity.readings import Rejection, RejectReason, format_ts
from safecity.registry import default_city

CITY = default_city()


def connects(ingest: Ingest) -> int:
    """How often the worker's main session connected (its log's `mqtt connected` lines)."""
    client = f'"safecity-{ingest.worker}"'
    return sum(
        1
        for line in ingest.log_path.read_text().splitlines()
        if '"mqtt connected"' in line and client in line
    )


def test_a_9k_topic_and_a_huge_payload_make_one_dead_letter_each_and_no_reconnect(
    stack: LocalStack, ingest_factory, tmp_path: Path
) -> None:
    db = new_db(stack)
    ingest = ingest_factory(stack, db).start()
    watcher = DeadLetterWatcher(stack, tmp_path / "letters.out", CITY.id)
    try:
        device = CITY.select(kind="noise")[3]
        # Inside the device's ACL pattern (`safecity/v1/+/+/+/%u/telemetry`): one level is long.
        district = "d" * 9000
        topic = f"{topics.PREFIX}/{CITY.id}/{district}/{device.kind}/{device.id}/telemetry"
        assert len(topic) > 9050
        body = json.dumps({"ts": format_ts(datetime.now(UTC)), "seq": 1, "values": {}})
        assert publish_as(stack, device, topic, body) == ""
        # A payload whose record is 6x larger as JSON (control characters are escaped).
        own = topics.telemetry_topic(CITY.id, device.district, device.kind, device.id)
        assert publish_as(stack, device, own, "\x01" * 12_000) == ""

        wait_for(lambda: len(DeadLetterStore(ingest.deadletter_dir).read()) >= 2, 20, "stored")
        wait_for(lambda: len(watcher.letters()) >= 2, 20, "both dead letters on the topic")
        # A small poison message as a marker: a reconnect loop would have redelivered and
        # dead-lettered the first two again before the marker's letter is published.
        assert publish_as(stack, device, own, "not json") == ""
        wait_for(lambda: len(watcher.letters()) >= 3, 20, "the marker's dead letter")
        stored = DeadLetterStore(ingest.deadletter_dir).read()
        published = watcher.letters()
    finally:
        watcher.close()
    assert len(stored) == 3 and len(published) == 3
    long_topic, huge, marker = stored
    assert marker["reason"] == "bad_json"
    assert long_topic["truncated"] is True and long_topic["topic_size"] == len(topic)
    assert long_topic["topic"] == topic[:MAX_TOPIC] and len(long_topic["detail"]) <= 512
    assert huge["size"] == 12_000 and len(huge["payload"]) == 4096  # the store keeps 4 KiB
    on_topic = {letter["sha256"]: letter for _, letter in published}
    assert on_topic[huge["sha256"]].get("payload_omitted") is True  # too big to republish
    assert "payload" in on_topic[long_topic["sha256"]]
    assert connects(ingest) == 1
    assert ingest.metric("safecity_ingest_mqtt_connected") == 1
    assert ingest.metric("safecity_ingest_redelivered_total") == 0
    assert ingest._ready()


def test_publishable_stays_under_the_packet_limit() -> None:
    rejection = Rejection(RejectReason.BAD_JSON, "x" * 10_000)
    letter = dead_letter(rejection, "t" * 20_000, b"\x01" * 20_000, "w")
    topic = topics.deadletter_topic(CITY.id, "bad_json")
    body = publishable(letter, topic, 16_384)
    assert body is not None and len(body) + len(topic) + 32 <= 16_384
    assert json.loads(body)["payload_omitted"] is True
    assert publishable(letter, topic, 600) is None
    small = dead_letter(rejection, "t", b"{}", "w")
    assert json.loads(publishable(small, topic, 16_384) or b"")["payload"] == "{}"


def test_redaction_hashes_personal_fields_and_keeps_device_hashes(tmp_path: Path) -> None:
    redactor = Redactor.for_directory(tmp_path)
    assert Redactor.for_directory(tmp_path).hash("01A123BC") == redactor.hash("01A123BC")
    device_hash = "a" * 64
    raw = json.dumps(
        {"details": {"plate": "01A123BC", "plate_hash": device_hash, "phone": "+998901234567"}}
    ).encode()
    out = redactor.redact(raw, "Extra inputs are not permitted: input_value='01A123BC'")
    text = out.payload.decode() + out.detail
    assert "01A123BC" not in text and "+998901234567" not in text
    assert redactor.hash("01A123BC") in out.payload.decode() and device_hash in text
    assert set(out.keys) == {"plate", "phone"}
    # Not JSON (cut off, or broken on purpose): the pairs are still found.
    cut = redactor.redact(b'{"ts":"x","details":{"plate":"01A123BC","speed":9', "")
    assert b"01A123BC" not in cut.payload and cut.keys == ("plate",)
    clean = redactor.redact(b'{"seq":1}', "fine")
    assert (clean.payload, clean.detail, clean.keys) == (b'{"seq":1}', "fine", ())


def test_a_refused_anpr_event_leaves_no_plain_plate_in_store_or_topic(
    stack: LocalStack, ingest_factory, tmp_path: Path
) -> None:
    db = new_db(stack)
    ingest = ingest_factory(stack, db).start()
    watcher = DeadLetterWatcher(stack, tmp_path / "letters.out", CITY.id)
    plate, other = "01A123BC", "10Z987XY"
    try:
        camera = CITY.select(kind="anpr")[0]
        topic = topics.device_topic(CITY.id, camera.district, camera.kind, camera.id, "event")
        ts = format_ts(datetime.now(UTC))

        def event(seq: int, details: dict[str, object]) -> str:
            body = {"ts": ts, "seq": seq, "type": "anpr_hit", "severity": "high"}
            return json.dumps({**body, "details": details})

        plain = event(1, {"plate": plate, "list": "stolen", "confidence": 0.9})
        # A plain plate where the camera's hash belongs: refused (not hex), redacted too.
        misplaced = event(2, {"plate_hash": other, "list": "stolen", "confidence": 0.9})
        assert publish_as(stack, camera, topic, plain, misplaced) == ""
        wait_for(lambda: len(watcher.letters()) >= 2, 20, "both dead letters on the topic")
        published = watcher.out.read_text()
    finally:
        watcher.close()
    stored = DeadLetterStore(ingest.deadletter_dir).read()
    assert len(stored) == 2
    text = (ingest.deadletter_dir / "deadletters.jsonl").read_text()
    for secret in (plate, other):
        assert secret not in text and secret not in published
    redactor = Redactor.for_directory(ingest.deadletter_dir)
    assert redactor.hash(plate) in text and redactor.hash(other) in published
    assert [r["redacted"] for r in stored] == [["plate"], ["plate_hash"]]
    assert ingest.log_path.read_text().count(plate) == 0
