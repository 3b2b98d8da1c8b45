"""Fault tests of docs/reliability.md: real processes are killed, paused and restarted mid-stream.

Every test publishes through a ledger-recording publisher and then runs the ledger
checker (control.verify): nothing acknowledged is lost or duplicated, and the
fault path actually ran (redeliveries, spooling), shown by the workers' metrics.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from faults import check, new_db, settled_check
from ledgerpub import LedgerPublisher, Outgoing, good_readings, reading
from support import wait_for

from control.stack import LocalStack
from safecity import topics
from safecity.registry import default_city

CITY = default_city()


def publisher(stack: LocalStack, tmp_path: Path, name: str = "ledger.jsonl") -> LedgerPublisher:
    return LedgerPublisher(stack.mqtt_settings("_simulator"), tmp_path / name)


def assert_clean(stack: LocalStack, db: str, ledger: Path, *dl: Path, timeout: float = 30) -> None:
    """Wait until the checker finds nothing lost; then nothing may be duplicated or altered."""
    report = settled_check(stack, db, ledger, *dl, timeout=timeout)
    assert report.acknowledged == report.sent > 0
    assert report.lost == []
    assert report.duplicated == []
    assert report.unexpected == []
    assert report.value_mismatch == []
    assert report.bad_not_deadlettered == []
    assert report.stored == report.good


def test_kill_9_ingest_three_times_mid_stream(stack, tmp_path, ingest_factory) -> None:
    db = new_db(stack)
    ingest = ingest_factory(stack, db, "kill9").start()
    pub = publisher(stack, tmp_path)
    # Long enough that the stream still runs at the third kill on a loaded machine (a
    # restart can take seconds there): a kill after the last ack has nothing to redeliver.
    # Once the third restart took its redeliveries, the rest of the stream proves nothing
    # more: it stops there.
    pub.start(good_readings(CITY, 9000, devices=100), rate=300)
    redelivered = 0.0
    for _ in range(3):
        wait_for(lambda: ingest.metric("safecity_ingest_acked_total") > 300, 20, "progress")
        ingest.kill()
        time.sleep(0.5)
        ingest.start()
        # The unacked in-flight messages of the killed worker come back with DUP set.
        wait_for(lambda: ingest.metric("safecity_ingest_redelivered_total") > 0, 20, "redeliveries")
        redelivered += ingest.metric("safecity_ingest_redelivered_total")
    pub.stop()
    pub.join()
    assert redelivered > 0
    assert_clean(stack, db, pub.ledger_path, ingest.deadletter_dir)


def test_stock_paho_receive_path_loses_nothing_across_a_kill_9(
    stack, tmp_path, ingest_factory
) -> None:
    """With the bulk-read fast path off, paho's own receive path and per-message acks."""
    db = new_db(stack)
    ingest = ingest_factory(stack, db, "stock", SAFECITY_MQTT__FAST_PATH="false").start()
    pub = publisher(stack, tmp_path)
    pub.start(good_readings(CITY, 3000, devices=60), rate=600)
    wait_for(lambda: ingest.metric("safecity_ingest_acked_total") > 300, 20, "progress")
    ingest.kill()
    time.sleep(0.5)
    ingest.start()
    wait_for(lambda: ingest.metric("safecity_ingest_redelivered_total") > 0, 20, "redeliveries")
    # The redeliveries came: the rest of the stream proves nothing more.
    pub.stop()
    pub.join()
    assert_clean(stack, db, pub.ledger_path, ingest.deadletter_dir)
    connected = [
        json.loads(line)
        for line in ingest.log_path.read_text().splitlines()
        if '"mqtt connected"' in line
    ]
    assert connected and all(entry["fast_path"] is False for entry in connected)


def test_crash_between_influx_write_and_ack(stack, tmp_path, ingest_factory) -> None:
    db = new_db(stack)
    # Fault injection (a hook the test launcher installs): the worker SIGKILLs itself
    # after its 3rd durable write, unacked.
    ingest = ingest_factory(stack, db, "crash").start(crash_after_write=3)
    pub = publisher(stack, tmp_path)
    pub.start(good_readings(CITY, 2000, devices=80), rate=500)
    wait_for(lambda: not ingest.process.alive, 20, "the injected crash")
    assert ingest.process.returncode == -9
    ingest.start()
    # Written but never acked: the broker redelivers; the rewrite overwrites itself.
    wait_for(lambda: ingest.metric("safecity_ingest_redelivered_total") > 0, 20, "redeliveries")
    pub.join()
    assert_clean(stack, db, pub.ledger_path, ingest.deadletter_dir)


def test_influxdb_sigstop_spools_then_drains(own_stack, tmp_path, ingest_factory) -> None:
    db = new_db(own_stack)
    ingest = ingest_factory(own_stack, db, "stopped").start()
    pub = publisher(own_stack, tmp_path)
    pub.start(good_readings(CITY, 3000, devices=100), rate=250)
    wait_for(lambda: ingest.metric("safecity_ingest_acked_total") > 200, 20, "progress")
    own_stack.influxd.pause()
    try:
        wait_for(lambda: ingest.metric("safecity_ingest_spooled_points_total") > 0, 15, "spool")
        # InfluxDB hangs, yet acking goes on: the spool makes batches durable. Once 500
        # more were acked into the spool, the hang has shown what it can (the worker's
        # InfluxDB timeout is 2 s: it has given up on InfluxDB, not waited it out).
        acked = ingest.metric("safecity_ingest_acked_total")
        wait_for(lambda: ingest.metric("safecity_ingest_acked_total") > acked + 500, 15, "acks")
    finally:
        own_stack.influxd.resume()
    # The spool now holds more than the drain below asserts: the rest of the stream
    # proves nothing more.
    pub.stop()
    pub.join()
    wait_for(lambda: ingest.metric("safecity_ingest_spool_points") == 0, 30, "spool drained")
    assert ingest.metric("safecity_ingest_spool_drained_points_total") > 500
    assert ingest.metric("safecity_broker_dropped_messages") == 0
    assert_clean(own_stack, db, pub.ledger_path, ingest.deadletter_dir)


def test_influxdb_killed_and_restarted(own_stack, tmp_path, ingest_factory) -> None:
    db = new_db(own_stack)
    ingest = ingest_factory(own_stack, db, "influxkill").start()
    pub = publisher(own_stack, tmp_path)
    pub.start(good_readings(CITY, 2500, devices=100), rate=300)
    wait_for(lambda: ingest.metric("safecity_ingest_acked_total") > 200, 20, "progress")
    own_stack.influxd.kill()
    wait_for(lambda: ingest.metric("safecity_ingest_spooled_points_total") > 300, 15, "spool")
    own_stack.influxd.start()
    # More than the drain below asserts is spooled already: the rest of the stream
    # proves nothing more.
    pub.stop()
    pub.join()
    wait_for(lambda: ingest.metric("safecity_ingest_spool_points") == 0, 30, "spool drained")
    assert ingest.metric("safecity_ingest_spool_drained_points_total") > 300
    assert_clean(own_stack, db, pub.ledger_path, ingest.deadletter_dir)


def test_spooled_batches_survive_kill_9_and_replay_on_start(
    own_stack, tmp_path, ingest_factory
) -> None:
    db = new_db(own_stack)
    ingest = ingest_factory(own_stack, db, "spoolkill").start()
    own_stack.influxd.pause()
    try:
        pub = publisher(own_stack, tmp_path)
        pub.run(good_readings(CITY, 800, devices=80))
        # All acked by the broker's count: the spool holds them, InfluxDB nothing. (The
        # spool may hold ingest's own ingest_stats points too: one every 10 s.)
        wait_for(lambda: ingest.metric("safecity_ingest_spool_points") >= 800, 20, "spooled")
        wait_for(lambda: ingest.metric("safecity_ingest_acked_total") == 800, 20, "acked")
        ingest.kill()
    finally:
        own_stack.influxd.resume()
    ingest.start()
    wait_for(
        lambda: ingest.metric("safecity_ingest_spool_drained_points_total") >= 800, 30, "replay"
    )
    assert ingest.metric("safecity_ingest_redelivered_total") == 0
    assert_clean(own_stack, db, pub.ledger_path, ingest.deadletter_dir)


def test_full_spool_stops_acking_until_it_drains(own_stack, tmp_path, ingest_factory) -> None:
    db = new_db(own_stack)
    ingest = ingest_factory(
        own_stack, db, "full", SAFECITY_SPOOL_MAX_BYTES=str(1 << 20), SAFECITY_BATCH_SIZE="500"
    ).start()
    own_stack.influxd.pause()
    try:
        pub = publisher(own_stack, tmp_path)
        pub.start(good_readings(CITY, 5000, devices=100))
        wait_for(lambda: ingest.metric("safecity_ingest_backpressure") == 1, 30, "back-pressure")
        assert ingest._ready() is False
        held = ingest.metric("safecity_ingest_acked_total")
        assert held < 5000
    finally:
        own_stack.influxd.resume()
    pub.join()
    wait_for(lambda: ingest.metric("safecity_ingest_backpressure") == 0, 30, "acking resumed")
    assert_clean(own_stack, db, pub.ledger_path, ingest.deadletter_dir)
    assert "spool full: back-pressure" in ingest.log_path.read_text()


def test_broker_graceful_restart_resumes_session(own_stack, tmp_path, ingest_factory) -> None:
    db = new_db(own_stack)
    # A slow flush keeps a backlog queued in the worker's session when the broker stops.
    ingest = ingest_factory(own_stack, db, "brokerrestart", SAFECITY_FLUSH_INTERVAL="1").start()
    messages = good_readings(CITY, 3000, devices=100)
    before = publisher(own_stack, tmp_path, "before.jsonl")
    before.run(messages[:2000])
    own_stack.mosquitto.restart()
    # Mosquitto 2.0.11 restores sessions but not *shared* subscriptions from its
    # persistence file (checked by hand): until the worker re-subscribes, a publish to
    # the shared topic has no subscriber. So the second half waits for the worker.
    wait_for(lambda: ingest._ready(), 20, "ingest reconnected")
    after = publisher(own_stack, tmp_path, "after.jsonl")
    after.run(messages[2000:])
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text(before.ledger_path.read_text() + after.ledger_path.read_text())
    assert_clean(own_stack, db, ledger, ingest.deadletter_dir)
    connects = [
        json.loads(line)
        for line in ingest.log_path.read_text().splitlines()
        if '"mqtt connected"' in line and '"safecity-brokerrestart"' in line
    ]
    assert len(connects) >= 2
    assert connects[-1]["session_present"] is True


def test_broker_graceful_restart_mid_stream_loses_nothing_on_a_plain_subscription(
    own_stack, tmp_path, ingest_factory
) -> None:
    db = new_db(own_stack)
    # A single worker on a plain (non-shared) subscription, as `make run` starts it: the
    # broker restores that subscription from its persistence file, so the publishes that
    # land while the worker is still reconnecting are queued for it, not dropped.
    ingest = ingest_factory(own_stack, db, "plainrestart", SAFECITY_SHARE_GROUP="").start()
    pub = publisher(own_stack, tmp_path)
    messages = good_readings(CITY, 3000, devices=100)
    pub.start(messages, rate=400)
    wait_for(lambda: ingest.metric("safecity_ingest_acked_total") > 300, 20, "ingest working")
    own_stack.mosquitto.restart()

    def connects() -> list[dict[str, object]]:
        return [
            json.loads(line)
            for line in ingest.log_path.read_text().splitlines()
            if '"mqtt connected"' in line and '"safecity-plainrestart"' in line
        ]

    # The stream goes on through the worker's reconnect (what lands meanwhile is queued
    # for it): once the worker acks again after its reconnect (or, on a slow machine,
    # the whole stream is out), the rest of the stream proves nothing more.
    wait_for(lambda: len(connects()) >= 2, 30, "the worker reconnected")
    acked = ingest.metric("safecity_ingest_acked_total")
    wait_for(
        lambda: (
            ingest.metric("safecity_ingest_acked_total") > acked + 100 or pub.sent == len(messages)
        ),
        20,
        "acks after the reconnect",
    )
    pub.stop()
    pub.join()
    assert_clean(own_stack, db, pub.ledger_path, ingest.deadletter_dir)
    assert len(connects()) >= 2
    assert connects()[-1]["session_present"] is True


def test_two_workers_one_killed_and_restarted(stack, tmp_path, ingest_factory) -> None:
    db = new_db(stack)
    group: dict[str, str] = {}  # both workers share the default group of the database
    first = ingest_factory(stack, db, f"{db}-0", **group).start()
    second = ingest_factory(stack, db, f"{db}-1", **group).start()
    pub = publisher(stack, tmp_path)
    pub.start(good_readings(CITY, 4000, devices=100), rate=400)
    wait_for(lambda: second.metric("safecity_ingest_acked_total") > 200, 20, "both working")
    # Hung first, then killed: the broker keeps sending the hung worker its share, so the
    # kill always leaves messages in flight to it (a bare kill can land just after an ack).
    second.process.pause()
    carried = first.metric("safecity_ingest_acked_total")
    wait_for(
        lambda: first.metric("safecity_ingest_acked_total") > carried + 200,
        20,
        "the stream going on beside the hung worker",
    )
    second.kill()
    carried = first.metric("safecity_ingest_acked_total")
    # The survivor carries the whole stream while the other is down.
    wait_for(
        lambda: first.metric("safecity_ingest_acked_total") > carried + 1000,
        20,
        "the surviving worker carrying the stream",
    )
    second.start()
    wait_for(lambda: second.metric("safecity_ingest_redelivered_total") > 0, 20, "redeliveries")
    # The restarted worker took its redeliveries: the rest of the stream proves nothing more.
    pub.stop()
    pub.join()
    assert first.metric("safecity_ingest_acked_total") > 0
    assert_clean(stack, db, pub.ledger_path, first.deadletter_dir)


def bad_messages(start: datetime) -> list[Outgoing]:
    """A mix of every malformed kind, on the noise devices."""
    noise = CITY.select(kind="noise")
    values = {"laeq": 55.0, "lamax": 65.0, "la90": 47.0}
    out = []
    for i in range(1800):
        device = noise[i % len(noise)]
        ts = start + timedelta(seconds=i)
        seq = 900_000 + i
        body = {"ts": ts.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "seq": seq, "values": values}
        kind = i % 9
        if kind == 0:
            out.append(
                reading(
                    CITY,
                    device,
                    seq=seq,
                    ts=ts,
                    values=values,
                    intended_reason="bad_json",
                    raw=b"{nope" + str(i).encode(),
                )
            )
        elif kind == 1:
            raw = json.dumps({**body, "values": {"laeq": 50.0}}).encode()
            out.append(
                reading(
                    CITY, device, seq=seq, ts=ts, values=values, intended_reason="schema", raw=raw
                )
            )
        elif kind == 2:
            raw = json.dumps(body).replace("55.0", "Infinity").encode()
            out.append(
                reading(
                    CITY,
                    device,
                    seq=seq,
                    ts=ts,
                    values=values,
                    intended_reason="non_finite",
                    raw=raw,
                )
            )
        elif kind == 3:
            raw = json.dumps({**body, "values": {**values, "laeq": 999.0}}).encode()
            out.append(
                reading(
                    CITY,
                    device,
                    seq=seq,
                    ts=ts,
                    values=values,
                    intended_reason="out_of_range",
                    raw=raw,
                )
            )
        elif kind == 4:
            topic = topics.telemetry_topic(CITY.id, device.district, "noise", f"ghost-{i}")
            out.append(
                reading(
                    CITY,
                    device,
                    seq=seq,
                    ts=ts,
                    values=values,
                    intended_reason="unknown_device",
                    topic=topic,
                )
            )
        elif kind == 5:
            other = "sergeli" if device.district != "sergeli" else "bektemir"
            topic = topics.telemetry_topic(CITY.id, other, "noise", device.id)
            out.append(
                reading(
                    CITY,
                    device,
                    seq=seq,
                    ts=ts,
                    values=values,
                    intended_reason="identity_mismatch",
                    topic=topic,
                )
            )
        elif kind == 6:
            old = start - timedelta(days=9)
            out.append(
                reading(
                    CITY, device, seq=seq, ts=old, values=values, intended_reason="ts_out_of_window"
                )
            )
        elif kind == 7:
            raw = json.dumps({**body, "pad": "x" * 9000}).encode()
            out.append(
                reading(
                    CITY,
                    device,
                    seq=seq,
                    ts=ts,
                    values=values,
                    intended_reason="too_large",
                    raw=raw,
                )
            )
        else:
            out.append(
                reading(
                    CITY,
                    device,
                    seq=seq,
                    ts=ts,
                    values=values,
                    intended_reason="conflicting_duplicate",
                )
            )
    return out


def test_bad_payload_flood_mixed_with_good(stack, tmp_path, ingest_factory) -> None:
    db = new_db(stack)
    ingest = ingest_factory(stack, db, "flood").start()
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    good = good_readings(CITY, 1800, devices=100)
    bad = bad_messages(start)
    # A conflicting duplicate needs its original first: same device and seq, other content.
    originals = [
        reading(
            CITY,
            m.device,
            seq=m.seq or 0,
            ts=start + timedelta(minutes=30, seconds=i, milliseconds=500),
            values={"laeq": 40.0, "lamax": 50.0, "la90": 30.0},
        )
        for i, m in enumerate(bad)
        if m.intended_reason == "conflicting_duplicate"
    ]
    pub = publisher(stack, tmp_path, "originals.jsonl")
    pub.run(originals)
    mixed = [m for pair in zip(good, bad, strict=True) for m in pair]
    pub2 = publisher(stack, tmp_path)
    pub2.run(mixed)
    ledger = tmp_path / "all.jsonl"
    ledger.write_text(pub.ledger_path.read_text() + pub2.ledger_path.read_text())
    assert_clean(stack, db, ledger, ingest.deadletter_dir)
    report = check(stack, db, ledger, ingest.deadletter_dir)
    sent_bad = Counter(m.intended_reason for m in bad)
    assert report.deadletters_by_reason == dict(sent_bad)
    assert report.bad_wrong_reason == [] and report.good_deadlettered == []
    assert ingest.metric("process_resident_memory_bytes") < 300 * 1024 * 1024


def test_rate_limit_dead_letters_the_excess(stack, tmp_path, ingest_factory) -> None:
    db = new_db(stack)
    ingest = ingest_factory(
        stack, db, "ratelimit", SAFECITY_RATE_LIMIT="0.001", SAFECITY_RATE_BURST="5"
    ).start()
    device = CITY.select(kind="noise")[0]
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    values = {"laeq": 55.0, "lamax": 65.0, "la90": 47.0}
    msgs = [
        reading(CITY, device, seq=i, ts=base + timedelta(seconds=i), values=values)
        for i in range(12)
    ]
    pub = publisher(stack, tmp_path)
    pub.window = 1  # in order, so the first five are the accepted ones
    pub.run(msgs)
    wait_for(lambda: ingest.metric("safecity_ingest_acked_total") == 12, 20, "all acked")
    assert ingest.metric('safecity_ingest_rejected_total{reason="rate_limited"}') == 7
    stored = check(stack, db, pub.ledger_path, ingest.deadletter_dir)
    assert stored.stored == 5
    assert len(stored.lost) == 7  # the ledger meant them as good: they were refused instead
    assert len(stored.good_deadlettered) == 7
