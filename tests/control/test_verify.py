"""`verify` with a settle time: it reads back until the figures settle, not the whole time."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from control.stack import Influxd
from control.verify import Report, verify
from safecity import ledger, schema, topics
from safecity.influx import InfluxClient
from safecity.registry import default_city
from safecity.settings import InfluxSettings

CITY = default_city()
DEVICE = CITY.devices[0]
MEASUREMENT = schema.measurement_of(DEVICE.kind)
T0 = 1_700_000_000_000
COUNT = 6


def _ledger(path: Path) -> Path:
    """COUNT good, acknowledged readings of one device, a second apart (seq 1..COUNT)."""
    topic = topics.telemetry_topic(CITY.id, DEVICE.district, DEVICE.kind, DEVICE.id)
    entries = [
        ledger.LedgerEntry(
            DEVICE.id, "telemetry", topic, seq, T0 + seq * 1000, f"{seq:064x}", None, 0
        )
        for seq in range(1, COUNT + 1)
    ]
    path.write_text("".join(e.to_json() + "\n" for e in entries), encoding="utf-8")
    return path


def _store(influxd: Influxd, database: str, seqs: range) -> None:
    lines = "\n".join(
        f"{MEASUREMENT},device_id={DEVICE.id} seq={seq}i {T0 + seq * 1000}" for seq in seqs
    )
    response = httpx.post(
        f"{influxd.url}/write",
        params={"db": database, "precision": "ms"},
        content=lines.encode(),
        timeout=10,
    )
    response.raise_for_status()


async def _verify(
    influxd: Influxd, database: str, path: Path, settle_s: float
) -> tuple[Report, float]:
    client = InfluxClient(InfluxSettings(url=influxd.url, database=database))
    began = time.monotonic()
    try:
        report = await verify(path, client, settle_s=settle_s, poll_s=0.2)
    finally:
        await client.close()
    return report, time.monotonic() - began


def test_messages_arriving_while_it_settles_are_found_and_it_stops_once_settled(
    influxd: Influxd, influx_db: str, tmp_path: Path
) -> None:
    path = _ledger(tmp_path / "ledger.jsonl")
    _store(influxd, influx_db, range(1, 4))

    async def late_arrivals() -> tuple[Report, float]:
        checking = asyncio.create_task(_verify(influxd, influx_db, path, settle_s=120))
        await asyncio.sleep(1.0)
        # The rest arrives while verify reads back: it must count them, not report them lost.
        await asyncio.to_thread(_store, influxd, influx_db, range(4, COUNT + 1))
        return await checking

    report, took = asyncio.run(late_arrivals())
    assert report.ok, report.render()
    assert (report.acknowledged, report.stored, report.lost) == (COUNT, COUNT, [])
    # Settled (all stored, the same twice): it returned long before the settle time.
    assert took < 60, took


def test_what_never_arrives_is_lost_after_the_whole_settle_time(
    influxd: Influxd, influx_db: str, tmp_path: Path
) -> None:
    path = _ledger(tmp_path / "ledger.jsonl")
    _store(influxd, influx_db, range(1, COUNT))
    report, took = asyncio.run(_verify(influxd, influx_db, path, settle_s=1.5))
    assert not report.ok
    assert report.stored == COUNT - 1
    assert report.lost == [f"{MEASUREMENT}/{DEVICE.id}@{T0 + COUNT * 1000} seq {COUNT}"]
    # It kept reading back for the whole settle time before calling it lost.
    assert took >= 1.5, took


def test_without_a_settle_time_it_checks_once(
    influxd: Influxd, influx_db: str, tmp_path: Path
) -> None:
    path = _ledger(tmp_path / "ledger.jsonl")
    _store(influxd, influx_db, range(1, COUNT + 1))
    report, _ = asyncio.run(_verify(influxd, influx_db, path, settle_s=0))
    assert report.ok, report.render()
    assert report.stored == COUNT
