"""The ledger checker against a real InfluxDB: what it finds lost, unexpected, altered or
duplicated, when devices are read back a chunk of devices a statement."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from control import verify
from control.influxd import Influxd
from safecity import ledger, schema, topics
from safecity.influx import InfluxClient
from safecity.settings import InfluxSettings

T0 = 1_700_000_000_000
MEASUREMENT = schema.measurement_of("noise")


def _sent(device: str, seq: int, ts: int, laeq: float) -> ledger.LedgerEntry:
    return ledger.LedgerEntry(
        device_id=device,
        channel="telemetry",
        topic=topics.telemetry_topic("almaty", "medeu", "noise", device),
        seq=seq,
        ts_ms=ts,
        sha256=f"{device}-{seq}",
        intended_reason=None,
        puback=0,
        values={"laeq": laeq},
    )


def _line(device: str, seq: int, ts: int, laeq: float) -> str:
    return f"{MEASUREMENT},city=almaty,device_id={device} seq={seq}i,laeq={laeq} {ts}"


def test_each_device_is_judged_on_its_own_points_across_chunks(
    influxd: Influxd, influx_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Five devices at two a statement: three statements, the last with one device.
    monkeypatch.setattr(verify, "READ_BACK_DEVICES", 2)
    entries = [
        _sent("n1", 1, T0, 50.0),
        _sent("n1", 2, T0 + 2000, 51.0),
        _sent("n2", 1, T0, 50.0),
        _sent("n2", 2, T0 + 2000, 51.0),  # never stored: lost
        _sent("n3", 1, T0, 50.0),
        _sent("n3", 2, T0 + 2000, 51.0),
        _sent("n4", 1, T0, 50.0),  # stored with another value
        _sent("n5", 1, T0, 50.0),
        _sent("n5", 2, T0 + 1000, 51.0),  # stored as seq 1 again
    ]
    stored = [
        _line("n1", 1, T0, 50.0),
        _line("n1", 2, T0 + 2000, 51.0),
        _line("n1", 3, T0 + 60_000, 52.0),  # after n1's span: not n1's business here
        _line("n2", 1, T0, 50.0),
        _line("n3", 1, T0, 50.0),
        _line("n3", 9, T0 + 1000, 49.0),  # inside n3's span, never sent
        _line("n3", 2, T0 + 2000, 51.0),
        _line("n4", 1, T0, 57.5),
        _line("n5", 1, T0, 50.0),
        _line("n5", 1, T0 + 1000, 51.0),
        _line("n9", 1, T0, 40.0),  # a device the ledger does not name
    ]
    httpx.post(
        f"{influxd.url}/write",
        params={"db": influx_db, "precision": "ms"},
        content="\n".join(stored),
        timeout=10,
    ).raise_for_status()
    progress: list[tuple[int, int]] = []

    async def run() -> verify.Report:
        client = InfluxClient(InfluxSettings(url=influxd.url, database=influx_db))
        try:
            return await verify.check(
                entries, client, progress=lambda done, total: progress.append((done, total))
            )
        finally:
            await client.close()

    report = asyncio.run(run())
    assert report.sent == report.acknowledged == report.good == 9
    assert report.stored == 9  # n1's later point and n9 are outside what was asked
    assert report.lost == [f"{MEASUREMENT}/n2@{T0 + 2000} seq 2"]
    assert report.unexpected == [f"{MEASUREMENT}/n3@{T0 + 1000}"]
    assert report.value_mismatch == [f"{MEASUREMENT}/n4@{T0}", f"{MEASUREMENT}/n5@{T0 + 1000}"]
    assert report.duplicated == [f"{MEASUREMENT}/n5 seq 1 x2"]
    assert not report.ok
    assert progress == [(0, 5), (2, 5), (4, 5)]
