"""Each device's newest reading and state (the overview's online/stale/offline) on a real
InfluxDB: the two-step answer equals one `last()` over the whole lookback, with rollup
tiers rolled and with none."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Literal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api import lastseen
from api.overview import device_state, take_snapshot
from api.params import TimeRange
from api.settings import ApiSettings
from api.tiers import TierBook
from control.stack import Influxd
from rollups.service import CityRollups
from rollups.settings import RollupSettings
from safecity import catalogue, citygen, schema
from safecity.influx import InfluxClient
from safecity.lineprotocol import Point, encode_many
from safecity.readings import Status, epoch_ms, from_epoch_ms
from safecity.registry import City
from safecity.rollups import parse_tiers
from safecity.settings import InfluxSettings

LOOKBACK_S = 6 * 3600
DEVICES = 40
_names = itertools.count()


def _city() -> City:
    """A generated city of its own (a tag of its own in the shared database)."""
    return citygen.generate(f"seen{next(_names)}x{time.time_ns() % 10**6}", DEVICES, seed=7)


def _point(city: City, index: int, at_ms: int, seq: int) -> Point:
    device = city.devices[index]
    tags = {"city": city.id, "district": device.district, "device_id": device.id}
    return Point(device.kind, tags, {"seq": seq}, at_ms)


def _status(city: City, index: int, at_ms: int, state: Literal["online", "offline"]) -> list[Point]:
    """A status message's points, as the ingest stores them (`schema.status_points`)."""
    status = Status(ts=from_epoch_ms(at_ms), state=state)
    return schema.status_points(city.id, city.devices[index], status)


async def _old_answer(
    client: InfluxClient, city: City, start: datetime, end: datetime
) -> dict[str, int]:
    """The answer before: one `last("seq")` of every kind over the whole lookback."""
    kinds = ", ".join(f'"{k}"' for k in catalogue.KINDS)
    statement = (
        f'SELECT last("seq") FROM {kinds} WHERE "city" = $city AND time >= $from '  # noqa: S608
        'AND time < $to GROUP BY "device_id"'
    )
    out: dict[str, int] = {}
    for s in await client.query(statement, lastseen.span_params(city.id, start, end)):
        for row in s.rows():
            device, at = str(row["device_id"]), int(row["time"])
            out[device] = max(at, out.get(device, at))
    return out


# Seconds before the end: after it (never counted), at its edge, in every kind's stale
# limit, beyond it, at the lookback's edge and before it.
offsets = st.one_of(
    st.integers(-900, LOOKBACK_S + 3600),
    st.sampled_from([0, 1, 899, 900, 901, 1799, 7199, 7201, LOOKBACK_S - 1, LOOKBACK_S]),
)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(st.tuples(st.integers(0, DEVICES - 1), offsets), max_size=80),
    max_filtered=st.sampled_from([0, 3, lastseen.MAX_FILTERED]),
)
def test_newest_readings_equal_one_last_over_the_lookback(
    influx_db: str, influxd: Influxd, rows: list[tuple[int, int]], max_filtered: int
) -> None:
    city = _city()
    end = datetime.now(UTC).replace(microsecond=0)
    start = end - timedelta(seconds=LOOKBACK_S)
    end_ms = epoch_ms(end)
    points = [_point(city, i, end_ms - s * 1000, n) for n, (i, s) in enumerate(rows)]
    expected: dict[str, int] = {}
    for i, s in rows:
        if 0 < s <= LOOKBACK_S:
            device, at = city.devices[i].id, end_ms - s * 1000
            expected[device] = max(at, expected.get(device, at))

    async def check() -> None:
        client = InfluxClient(InfluxSettings(url=influxd.url, database=influx_db))
        try:
            await client.ensure_database()
            if points:
                await client.write(encode_many(points))
            api = ApiSettings(influx=client.settings)
            found = await lastseen.newest_readings(client, api, city, (start, end), max_filtered)
            assert found == expected
            assert found == await _old_answer(client, city, start, end)
        finally:
            await client.close()

    asyncio.run(check())


SHORT = "1m:2d,1h:30d"
LONG_LOOKBACK_S = 3 * 86_400


def _scenario(city: City, end_ms: int) -> tuple[list[Point], dict[int, str]]:
    """Readings (up to 300 a device) for most devices, and the state each must get."""
    points: list[Point] = []
    want: dict[int, str] = {}
    for i, device in enumerate(city.devices):
        cadence_ms = int(catalogue.KINDS[device.kind].cadence_s * 1000)
        if i % 8 == 0:  # never seen
            want[i] = "offline"
            continue
        if i % 8 == 1:  # last reading 60 h ago: before what a 2-day finest tier keeps
            last = end_ms - 60 * 3_600_000 - 7_000
            want[i] = "stale"
        elif i % 8 == 2:  # last reading before the lookback
            last = end_ms - LONG_LOOKBACK_S * 1000 - 3_600_000
            want[i] = "offline"
        elif i % 8 == 3:  # silent for three hours: stale whatever its cadence
            last = end_ms - 3 * 3_600_000 - 1_000
            want[i] = "stale"
        else:
            last = end_ms - 3_000 - i * 10
            want[i] = "online"
        times = range(last - 26 * 3_600_000, last + 1, cadence_ms)
        points += [_point(city, i, at, n) for n, at in enumerate(times)][-300:]
        points.append(_point(city, i, last, 10**6))
        if i % 8 == 4:  # said goodbye after its last reading
            points += _status(city, i, last + 500, "offline")
            want[i] = "offline"
        if i % 8 == 5:  # an old goodbye, readings since
            points += _status(city, i, last - 3_600_000, "offline")
    return points, want


def test_states_are_the_same_with_tiers_rolled_and_with_none(
    influx_db: str, influxd: Influxd
) -> None:
    """A never-seen device, one whose last reading is older than the finest tier keeps,
    one before the lookback, stale and offline ones: the same last readings and states
    whatever tiers exist or have rolled, equal to `last()` over raw."""
    city = _city()
    end = datetime.now(UTC).replace(microsecond=0)
    end_ms = epoch_ms(end)
    points, want = _scenario(city, end_ms)
    window = TimeRange(end - timedelta(minutes=15), end)
    books = {
        "none": TierBook(()),
        "default": TierBook(parse_tiers("1m:90d,1h:1825d,1d:INF")),
        "short": TierBook(parse_tiers(SHORT)),
    }

    async def check() -> None:
        influx = InfluxSettings(url=influxd.url, database=influx_db, rollup_tiers=SHORT)
        client = InfluxClient(influx)
        try:
            await client.ensure_database()
            await client.write(encode_many(points))
            job = RollupSettings(influx=influx, rollup_settle=0, rollup_chunk_buckets=5000)
            await CityRollups(job, city, client).catch_up(int(time.time() * 1000))
            api = ApiSettings(influx=influx, status_lookback=LONG_LOOKBACK_S)
            old = await _old_answer(client, city, end - timedelta(seconds=LONG_LOOKBACK_S), end)
            for name, book in books.items():
                snap = await take_snapshot(client, city, window, api, book)
                registered = {d.id for d in city.devices}
                assert {k: v for k, v in snap.last_seen.items() if k in registered} == old, name
                states = {i: device_state(snap, api, d) for i, d in enumerate(city.devices)}
                assert states == want, name
                if name == "none":
                    assert all(p.tier is None for ps in snap.served.values() for p in ps)
        finally:
            await client.close()

    asyncio.run(check())
