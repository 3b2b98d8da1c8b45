"""The edge spool: bounded, ordered, crash-safe (append-only log with done records)."""

from __future__ import annotations

import os
from pathlib import Path

from edge.spool import COMPACT_MIN_BYTES, DeviceSpool


def ids(items: list) -> list[int]:  # type: ignore[type-arg]
    return [item.meta["i"] for item in items]


def test_spool_is_bounded_ordered_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "dev.spool"
    spool = DeviceSpool(path, max_bytes=2000)
    accepted = [i for i in range(100) if spool.append("t", bytes([i, 0xFF]), {"i": i}) is not None]
    assert 5 < len(accepted) < 100  # bounded
    first = spool.take(3)
    assert ids(first) == accepted[:3]
    spool.settle([first[0].id])
    spool.rewind([first[2].id])  # sent, not settled: back in front
    assert ids(spool.take(2)) == [accepted[2], accepted[3]]
    spool.close()
    # A restart forgets what was handed out: everything unsettled is unsent again.
    again = DeviceSpool(path, max_bytes=2000)
    rest = again.take(1000)
    assert ids(rest) == accepted[1:]
    assert rest[0].payload == bytes([accepted[1], 0xFF]) and rest[0].from_disk
    assert again.settle(i.id for i in rest) == len(rest)
    assert again.pending == 0
    again.close()
    assert not path.exists()


def test_acks_find_entries_by_channel_and_seq(tmp_path: Path) -> None:
    spool = DeviceSpool(tmp_path / "s.spool", 1 << 20)
    for seq in range(10, 20):
        spool.append("x/telemetry", b"r", {"i": seq}, seq, "telemetry")
    spool.append("x/event", b"e", {"i": 15}, 15, "event")
    spool.append("x/status", b"s", {"i": -1})
    assert len(spool.lookup("telemetry", 12, 14)) == 3
    assert len(spool.lookup("event", 0, 1 << 62)) == 1  # a wide range scans, never loops
    assert spool.lookup("telemetry", 30, 40) == []
    spool.settle(spool.lookup("telemetry", 0, 100))
    assert ids(spool.take(10)) == [15, -1]
    spool.close()


def test_a_torn_last_record_is_cut_and_the_rest_replays(tmp_path: Path) -> None:
    path = tmp_path / "torn.spool"
    spool = DeviceSpool(path, 1 << 20)
    for i in range(5):
        spool.append("t", b"p", {"i": i}, i, "telemetry")
    spool.settle([0, 1])
    spool.close()
    with path.open("ab") as handle:
        handle.write(b'{"i":5,"t":"t","p":"')  # a crash mid-write (a power cut, not kill -9)
    again = DeviceSpool(path, 1 << 20)
    assert ids(again.take(10)) == [2, 3, 4]
    # Ids continue after the replayed ones: a done record can never name a new message.
    assert again.append("t", b"p", {"i": 9}) == 5
    again.close()


def test_compaction_keeps_the_unsettled_and_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "big.spool"
    spool = DeviceSpool(path, 64 << 20, cache=10)
    payload = os.urandom(3000)
    keep = spool.append("t", payload, {"i": "keep"}, 1, "telemetry")
    assert keep is not None
    n = 0
    while spool.file_bytes < COMPACT_MIN_BYTES:
        ident = spool.append("t", payload, {"i": n}, 100 + n, "telemetry")
        assert ident is not None
        n += 1
    spool.settle(range(1, n + 1))  # all but the first: the log shrinks to one record
    assert spool.pending == 1 and spool.file_bytes == spool.bytes_used < 8000
    assert not path.with_name(path.name + ".compact").exists()
    item = spool.item(keep)
    assert item is not None and item.payload == payload
    spool.close()
    again = DeviceSpool(path, 64 << 20)
    assert [i.payload for i in again.take(5)] == [payload]
    assert again.lookup("telemetry", 1, 1) == [keep]
    again.close()


def test_a_spool_holds_no_open_file_even_while_it_holds_messages(tmp_path: Path) -> None:
    # A process of thousands of devices: one open file each (its connection), not two,
    # even while a broker outage has every device spooling.
    def open_files() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_files()
    spools = [DeviceSpool(tmp_path / "spool" / f"d{i}.spool", 1 << 20) for i in range(50)]
    for spool in spools:
        for seq in range(3):
            spool.append("t", b"x", {"i": seq}, seq, "telemetry")
        spool.settle([item.id for item in spool.take(1)])
    assert open_files() == before
    again = [DeviceSpool(spool.path, 1 << 20) for spool in spools]
    assert [s.pending for s in again] == [2] * 50
    assert [ids(s.take(5)) for s in again] == [[1, 2]] * 50
    assert open_files() == before
