"""The status messages that decide a device's state (`api.offline`) on a real InfluxDB:
the states equal those of every device's last status over the whole lookback, whatever
the readings and status messages, replayed late or stored twice."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api import lastseen, offline
from api.overview import Snapshot, device_state, take_snapshot
from api.params import TimeRange
from api.settings import ApiSettings
from api.tiers import TierBook
from control.stack import Influxd
from safecity import citygen, schema
from safecity.influx import InfluxClient
from safecity.lineprotocol import Point, encode_many
from safecity.readings import Status, epoch_ms, from_epoch_ms
from safecity.registry import City
from safecity.settings import InfluxSettings

LOOKBACK_S = 6 * 3600
DEVICES = 24
_names = itertools.count()
State = Literal["online", "offline"]


def _city() -> City:
    return citygen.generate(f"off{next(_names)}x{time.time_ns() % 10**6}", DEVICES, seed=7)


# Seconds before the end: after it (never counted), at its edge, recent, old, at the
# lookback's edge and before it.
offsets = st.one_of(
    st.integers(-600, LOOKBACK_S + 3600),
    st.sampled_from([0, 1, 2, 60, 899, 900, 901, 3600, LOOKBACK_S - 1, LOOKBACK_S]),
)
messages = st.lists(
    st.tuples(st.integers(0, DEVICES - 1), offsets, st.sampled_from(["online", "offline"])),
    max_size=60,
)


def _points(
    city: City, end_ms: int, readings: list[tuple[int, int]], said: list[Any]
) -> list[Point]:
    out = []
    for n, (i, s) in enumerate(readings):
        device = city.devices[i]
        tags = schema.reading_tags(city.id, device)
        out.append(Point(device.kind, tags, {"seq": n}, end_ms - s * 1000))
    for i, s, state in said:
        status = Status(ts=from_epoch_ms(end_ms - s * 1000), state=state)
        out += schema.status_points(city.id, city.devices[i], status)
    return out


async def _reference(
    client: InfluxClient, city: City, snap: Snapshot, api: ApiSettings
) -> dict[str, str]:
    """Every device's state from its last status over the whole lookback (the statement
    the snapshot asked before) and the same newest readings."""
    end = snap.window.end
    params = lastseen.span_params(city.id, end - timedelta(seconds=LOOKBACK_S), end)
    answer = await client.query(offline.status_statement(), params)
    whole = Snapshot(snap.window, snap.generated_at, last_seen=snap.last_seen)
    whole.status = offline.statuses_of(answer)
    return {d.id: device_state(whole, api, d) for d in city.devices}


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    readings=st.lists(st.tuples(st.integers(0, DEVICES - 1), offsets), max_size=60),
    said=messages,
    again=messages,
    echoes=st.lists(st.tuples(st.integers(0, 59), st.sampled_from(["online", "offline"]))),
)
def test_states_equal_the_last_status_over_the_whole_lookback(
    influx_db: str,
    influxd: Influxd,
    readings: list[tuple[int, int]],
    said: list[tuple[int, int, State]],
    again: list[tuple[int, int, State]],
    echoes: list[tuple[int, State]],
) -> None:
    """Readings and status messages at random times (a device's online and offline in the
    same millisecond included: the later write wins in `device_status`, the offline twin
    stays), messages in the very millisecond of a reading of their device (`echoes`), then
    more messages and every earlier one again (late replays and redeliveries)."""
    city = _city()
    end = datetime.now(UTC).replace(microsecond=0)
    end_ms = epoch_ms(end)
    said = said + [(*readings[k], state) for k, state in echoes if k < len(readings)]
    first = _points(city, end_ms, readings, said)
    second = _points(city, end_ms, [], [*again, *said])
    window = TimeRange(end - timedelta(minutes=15), end)

    async def check() -> None:
        client = InfluxClient(InfluxSettings(url=influxd.url, database=influx_db))
        try:
            await client.ensure_database()
            for batch in (first, second):
                if batch:
                    await client.write(encode_many(batch))
            api = ApiSettings(influx=client.settings, status_lookback=LOOKBACK_S)
            snap = await take_snapshot(client, city, window, api, TierBook(()))
            states = {d.id: device_state(snap, api, d) for d in city.devices}
            assert states == await _reference(client, city, snap, api)
            span = (end - timedelta(seconds=LOOKBACK_S), end)
            off = await offline.newest_offline(client, city.id, span)
            for limit in (0, 2, lastseen.MAX_FILTERED):  # filtered by device, and not
                found = await offline.deciding_statuses(
                    client, city.id, end, off, snap.last_seen, limit
                )
                assert found == snap.status
        finally:
            await client.close()

    asyncio.run(check())


def test_the_backfill_gives_old_offline_messages_their_twins(
    influx_db: str, influxd: Influxd
) -> None:
    """Offline messages stored before `device_offline` existed (no twin) decide nothing
    until the ingest's next start prepares the database (`ensure_database` runs
    `schema.OFFLINE_BACKFILL` once); then the states are the reference's."""
    city = _city()
    end = datetime.now(UTC).replace(microsecond=0)
    end_ms = epoch_ms(end)
    readings = [(i, 600) for i in range(DEVICES)]
    said: list[tuple[int, int, State]] = [(i, 60, "offline") for i in range(0, DEVICES, 2)]
    old = [p for p in _points(city, end_ms, readings, said) if p.measurement != "device_offline"]
    window = TimeRange(end - timedelta(minutes=15), end)

    async def check() -> None:
        client = InfluxClient(InfluxSettings(url=influxd.url, database=influx_db))
        try:
            await client.ensure_database()
            await client.write(encode_many(old))
            api = ApiSettings(influx=client.settings, status_lookback=LOOKBACK_S)
            offline_now = []
            for _ in range(2):  # before the next start and after it
                snap = await take_snapshot(client, city, window, api, TierBook(()))
                states = {d.id: device_state(snap, api, d) for d in city.devices}
                offline_now.append(sum(1 for s in states.values() if s == "offline"))
                await client.ensure_database()
            assert offline_now == [0, DEVICES // 2]
            assert states == await _reference(client, city, snap, api)
        finally:
            await client.close()

    asyncio.run(check())
