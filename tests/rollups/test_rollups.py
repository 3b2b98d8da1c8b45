"""The rollup job against a real InfluxDB: tier-served aggregates equal raw ones, late data
re-rolls, and a job killed with SIGKILL resumes with no gap and no double count.

Float tolerance: a tier-served mean is sum/count of float64 sums, raw's is InfluxDB's
running mean: they agree to a relative 1e-9 (min, max and count exactly).
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import wait_for

from api.queries import series_statement
from api.tiers import SeriesAsk, TierBook, tiered_series
from control.stack import Influxd, free_port
from rollups.service import CityRollups
from rollups.settings import RollupSettings
from safecity.influx import InfluxClient
from safecity.lineprotocol import Point, encode_many
from safecity.readings import format_epoch_ms
from safecity.registry import default_city
from safecity.settings import InfluxSettings

CITY = default_city()
_AQ = [d for d in CITY.devices if d.kind == "air_quality"]
# Three districts, the first with two devices: a district's rollups are its devices'
# combined, and the property test compares them with raw.
_DISTRICTS = sorted(
    {d.district for d in _AQ}, key=lambda x: ([d.district for d in _AQ].count(x) < 2, x)
)[:3]
_ONE_EACH = [next(d for d in _AQ if d.district == x) for x in _DISTRICTS]
DEVICES = [*_ONE_EACH, [d for d in _AQ if d.district == _DISTRICTS[0]][1]]
TIERS = "1m:90d,1h:1825d,1d:INF"
DAY_MS = 86_400_000
REL = 1e-9
BUCKETS_S = (60, 300, 3600, 3 * 3600, 86_400)
AGGS = ("mean", "min", "max", "count")


def _base_ms() -> int:
    """Two whole UTC days before today's midnight: every bucket of the data is closed."""
    now = int(time.time() * 1000)
    return now - now % DAY_MS - 2 * DAY_MS


def _point(device_index: int, ts_ms: int, seq: int, pm25: float, no2: float | None) -> Point:
    device = DEVICES[device_index]
    fields: dict[str, float | int] = {"seq": seq, "pm25": pm25}
    if no2 is not None:
        fields["no2"] = no2
    tags = {"city": CITY.id, "district": device.district, "device_id": device.id}
    return Point("air_quality", tags, fields, ts_ms)


def _settings(url: str, database: str) -> InfluxSettings:
    return InfluxSettings(url=url, database=database, rollup_tiers=TIERS, gzip=False)


class Db:
    """A fresh database with its policies, dropped at the end."""

    def __init__(self, influxd: Influxd) -> None:
        self.url = influxd.url
        self.name = f"rollup_{secrets.token_hex(5)}"
        self.settings = _settings(self.url, self.name)

    async def __aenter__(self) -> InfluxClient:
        self.client = InfluxClient(self.settings)
        await self.client.ensure_database()
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        await self.client.execute(f'DROP DATABASE "{self.name}"')
        await self.client.close()


def _rollups(settings: InfluxSettings, client: InfluxClient) -> CityRollups:
    job = RollupSettings(influx=settings, rollup_settle=0, rollup_chunk_buckets=5000)
    return CityRollups(job, CITY, client, ("air_quality",))


async def _raw(client: InfluxClient, ask: SeriesAsk, params: dict[str, str]) -> dict[int, float]:
    statement = series_statement(ask.kind, ask.field, ask.agg, ask.every_s, by=ask.by)
    return {
        int(r["time"]): float(r["value"])
        for s in await client.query(statement, params)
        for r in s.rows()
        if r.get("value") is not None
    }


def _by(which: int) -> tuple[str, dict[str, str]]:
    if which == 0:
        return "", {}
    if which == 1:
        return "district", {"district": DEVICES[0].district}
    return "device_id", {"device_id": DEVICES[1].id}


async def _compare(
    client: InfluxClient,
    book: TierBook,
    ask: SeriesAsk,
    extra: dict[str, str],
    span: tuple[int, int],
) -> list[str]:
    """Tier-served and raw series of one ask; returns the tiers that served it."""
    params = {"city": CITY.id, **extra}
    window = {"from": format_epoch_ms(span[0]), "to": format_epoch_ms(span[1])}
    parts, pieces = await tiered_series(client, book, ask, params, span)
    served = [point for part in parts for point in part]
    raw = await _raw(client, ask, {**params, **window})
    assert [t for t, _ in served] == sorted(raw), ask
    for t, value in served:
        assert math.isclose(value, raw[t], rel_tol=REL, abs_tol=REL), (ask, t, value, raw[t])
    return [p.name for p in pieces]


readings = st.lists(
    st.tuples(
        st.integers(0, len(DEVICES) - 1),
        st.integers(0, 2 * 86_400 - 1),
        st.floats(0, 999, allow_nan=False).map(lambda v: round(v, 3)),
        st.none() | st.floats(0, 400, allow_nan=False),
    ),
    min_size=1,
    max_size=120,
)


@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=readings, data=st.data())
def test_tier_served_aggregates_equal_raw_for_aligned_windows(
    influxd: Influxd, rows: list[tuple[int, int, float, float | None]], data: st.DataObject
) -> None:
    base = _base_ms()
    # An anchor at the start: every tier then holds the whole span (see `since_ms`).
    unique = {(0, 0): (1.0, None), **{(d, s): (pm, no2) for d, s, pm, no2 in rows}}
    points = [
        _point(d, base + s * 1000, i, pm, no2)
        for i, ((d, s), (pm, no2)) in enumerate(unique.items())
    ]
    asks = []
    for _ in range(3):
        every = data.draw(st.sampled_from(BUCKETS_S))
        n = 2 * 86_400 // every
        first = data.draw(st.integers(0, n - 1))
        last = data.draw(st.integers(first + 1, n))
        by, extra = _by(data.draw(st.integers(0, 2)))
        span = (base + first * every * 1000, base + last * every * 1000)
        for agg in AGGS:
            asks.append(
                (
                    SeriesAsk(
                        "air_quality", data.draw(st.sampled_from(["pm25", "no2"])), agg, every, by
                    ),
                    extra,
                    span,
                )
            )

    async def check() -> None:
        async with Db(influxd) as client:
            await client.write(encode_many(points))
            await _rollups(client.settings, client).catch_up(int(time.time() * 1000))
            book = TierBook.of(client.settings)
            for ask, extra, span in asks:
                served = await _compare(client, book, ask, extra, span)
                assert "raw" not in served, (ask, served)

    asyncio.run(check())


def test_a_district_or_device_at_a_tiers_own_bucket_reads_its_points_as_raw_would(
    influxd: Influxd,
) -> None:
    """At a tier's own bucket one district or device is one point per bucket (read
    ungrouped): every aggregate equals raw, buckets without a field included."""
    base = _base_ms()
    points = [
        _point(i % len(DEVICES), base + s * 1000, i, 10.0 + i % 7, None if i % 3 else 20.0 + i)
        for i, s in enumerate(range(0, 2 * 86_400, 1_800))
    ]
    points.append(_point(0, base + 5 * 3_600_000 + 7_000, 10**6, 50.0, None))

    async def check() -> None:
        async with Db(influxd) as client:
            await client.write(encode_many(points))
            await _rollups(client.settings, client).catch_up(int(time.time() * 1000))
            book = TierBook.of(client.settings)
            for every in (60, 3600, 86_400):
                for which in (1, 2):
                    by, extra = _by(which)
                    for agg in AGGS:
                        for field_name in ("pm25", "no2"):
                            ask = SeriesAsk("air_quality", field_name, agg, every, by)
                            span = (base, base + 2 * DAY_MS)
                            served = await _compare(client, book, ask, extra, span)
                            assert served == [
                                next(t.name for t in book.tiers if t.every_s == every)
                            ]

    asyncio.run(check())


def test_late_readings_are_rolled_again(influxd: Influxd) -> None:
    base = _base_ms()
    early = [_point(i % 3, base + i * 61_000, i, float(i % 50), None) for i in range(600)]
    late = [_point(i % 3, base + 30_000 + i * 7_200_000, 1000 + i, 900.0, None) for i in range(12)]
    ask = SeriesAsk("air_quality", "pm25", "max", 3600, "")
    span = (base, base + DAY_MS)

    async def check() -> tuple[int, int]:
        async with Db(influxd) as client:
            job = _rollups(client.settings, client)
            await client.write(encode_many(early))
            await job.catch_up(int(time.time() * 1000))
            await client.write(encode_many(late))  # a replayed spool: all before the watermark
            # A book that re-reads the watermarks after 0.2 s: its pieces read before the
            # late data must not be served once the job rolled them again.
            book = TierBook(TierBook.of(client.settings).tiers, ttl=0.2)
            with pytest.raises(AssertionError):  # the tiers have not seen them yet
                await _compare(client, book, ask, {}, span)
            rerolled = await job.recheck(int(time.time() * 1000))
            await asyncio.sleep(0.3)
            for every in BUCKETS_S:
                for agg in AGGS:
                    await _compare(
                        client, book, SeriesAsk("air_quality", "pm25", agg, every), {}, span
                    )
            return rerolled, await job.recheck(int(time.time() * 1000))

    rerolled, again = asyncio.run(check())
    # 12 late readings in 12 distinct hours: 12 hour units of the 1m and 1h tiers, 1 day unit.
    assert rerolled == 12 + 12 + 1
    assert again == 0


def _job_env(url: str, database: str, port: int) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("SAFECITY_") or k == "SAFECITY_HOME"
    }
    env.update(
        {
            "SAFECITY_INFLUX__URL": url,
            "SAFECITY_INFLUX__DATABASE": database,
            "SAFECITY_INFLUX__ROLLUP_TIERS": "1m:90d,1h:1825d",
            "SAFECITY_ROLLUP_CHUNK_BUCKETS": "180",
            "SAFECITY_ROLLUP_SETTLE": "0",
            "SAFECITY_ROLLUP_INTERVAL": "0.2",
            "SAFECITY_ROLLUP_METRICS_PORT": str(port),
        }
    )
    return env


def _start_job(url: str, database: str, log: Path) -> subprocess.Popen[bytes]:
    env = _job_env(url, database, free_port())
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "control", "rollup"], env=env, stdout=out, stderr=out
        )


def _until(url: str, database: str, tier: str = "1m") -> int:
    """A tier's watermark of air_quality, read as any InfluxDB client would (0: none)."""
    q = (
        f'SELECT last("until_ms") FROM "rollup_{tier}"."rollup_watermark" '  # noqa: S608
        "WHERE \"kind\" = 'air_quality'"
    )
    body = httpx.post(f"{url}/query", data={"q": q, "db": database}, timeout=5).json()
    series = body["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


@pytest.fixture
def kill_db(influxd: Influxd) -> Iterator[tuple[str, str]]:
    """A database with yesterday's one-minute readings of three devices."""
    name = f"rollup_{secrets.token_hex(5)}"
    base = _base_ms() + DAY_MS
    points = [
        _point(d, base + m * 60_000 + d * 1000, m, float((m * 7 + d) % 300) + 0.25, float(m % 90))
        for m in range(1440)
        for d in range(3)
    ]

    async def seed() -> None:
        client = InfluxClient(_settings(influxd.url, name))
        await client.ensure_database()
        await client.write(encode_many(points))
        await client.close()

    asyncio.run(seed())
    yield influxd.url, name
    httpx.post(f"{influxd.url}/query", data={"q": f'DROP DATABASE "{name}"'}, timeout=5)


def test_a_killed_job_resumes_with_no_gap_and_no_double_count(
    kill_db: tuple[str, str], tmp_path: Path
) -> None:
    url, name = kill_db
    client_settings = _settings(url, name).model_copy(update={"rollup_tiers": "1m:90d,1h:1825d"})
    base = _base_ms() + DAY_MS
    job = _start_job(url, name, tmp_path / "rollup.log")
    client = InfluxClient(client_settings)
    try:
        mid_way = base + 3 * 3_600_000
        wait_for(lambda: _until(url, name) >= mid_way, 30, "three hours rolled", interval=0.05)
        job.send_signal(signal.SIGKILL)
        job.wait(10)
        killed_at = _until(url, name)
        assert base < killed_at < base + DAY_MS, "killed mid-way"
        job = _start_job(url, name, tmp_path / "rollup.log")
        done = base + DAY_MS
        wait_for(lambda: _until(url, name, "1h") >= done, 60, "the day rolled", interval=0.2)
        assert _until(url, name, "1m") >= base + DAY_MS
        assert _until(url, name, "1h") >= base + DAY_MS
    finally:
        job.kill()
        job.wait(10)
    book = TierBook.of(client_settings)

    async def compare() -> None:
        span = (base, base + DAY_MS)
        for every in (60, 3600):
            for agg in ("count", "mean"):
                for field in ("pm25",):
                    ask = SeriesAsk("air_quality", field, agg, every, "device_id")
                    served = await _compare(client, book, ask, {"device_id": DEVICES[2].id}, span)
                    assert served == [f"{every // 60}m" if every == 60 else "1h"]
        await client.close()

    asyncio.run(compare())


async def _queries_executed(client: InfluxClient) -> int:
    """InfluxDB's own count of the statements it executed (this one included)."""
    series = await client.query("SHOW STATS FOR 'queryExecutor'")
    return int(next(r["queriesExecuted"] for s in series for r in s.rows()))


def test_callers_finding_the_marks_stale_at_once_share_one_read(influxd: Influxd) -> None:
    """Eight requests finding the watermarks stale together wait for one read of them (a
    statement a tier), and every one sees what the job rolled."""
    base = _base_ms()
    points = [_point(i % len(DEVICES), base + i * 60_000, i, 10.0, 20.0) for i in range(240)]

    async def check() -> None:
        async with Db(influxd) as client:
            await client.write(encode_many(points))
            await _rollups(client.settings, client).catch_up(int(time.time() * 1000))
            book = TierBook(TierBook.of(client.settings).tiers, ttl=0)
            before = await _queries_executed(client)
            marks = await asyncio.gather(*(book.marks(client) for _ in range(8)))
            assert await _queries_executed(client) - before == len(book.tiers) + 1
            assert all(m == marks[0] for m in marks)
            assert {t.name for t in book.tiers} == set(marks[0])
            for rolled in marks[0].values():
                assert rolled["air_quality"].since_ms <= base < rolled["air_quality"].until_ms

    asyncio.run(check())


def test_tiers_without_a_closed_bucket_ask_for_the_oldest_reading_once_per_recheck(
    influxd: Influxd,
) -> None:
    """A fresh city (readings of the last minutes only: no bucket of any tier is closed)
    costs a pass no read of every series for its oldest reading once it has been asked;
    the next recheck interval asks again (older data may have arrived)."""
    now = int(time.time() * 1000)
    points = [_point(i % len(DEVICES), now - 30_000 + i, i, 10.0, 20.0) for i in range(8)]

    async def check() -> None:
        async with Db(influxd) as client:
            await client.write(encode_many(points))
            settings = RollupSettings(influx=client.settings, rollup_settle=86_400)
            job = CityRollups(settings, CITY, client, ("air_quality",))
            counts = []
            for at in (now, now + 1_000, now + 2_000):
                before = await _queries_executed(client)
                assert await job.catch_up(at) == 0  # nothing closed: nothing rolled
                counts.append(await _queries_executed(client) - before)
            later = now + int(job.settings.rollup_recheck_interval * 1000)
            before = await _queries_executed(client)
            await job.catch_up(later)
            asked_again = await _queries_executed(client) - before
        # A pass reads the watermarks (a statement a tier) and, the first time in a recheck
        # interval, the kind's oldest reading (once for every tier); +1: the count itself.
        tiers = len(job.tiers)
        assert counts == [tiers + 2, tiers + 1, tiers + 1]
        assert asked_again == tiers + 2

    asyncio.run(check())
