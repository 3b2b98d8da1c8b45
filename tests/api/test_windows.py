"""The overview's window means on a real InfluxDB: `mean()` over a raw window is the same
figure as the sums and counts it used to add up, and as the mean of what was written."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.overview import MEAN_FIELDS, overview, take_snapshot
from api.params import TimeRange
from api.settings import ApiSettings
from api.tiers import Piece, TierBook, add_sums
from api.windows import WindowMeans, window_means, window_statement
from control.stack import Influxd
from safecity import citygen
from safecity.influx import InfluxClient
from safecity.lineprotocol import Point, encode_many
from safecity.readings import epoch_ms, format_epoch_ms
from safecity.registry import City
from safecity.settings import InfluxSettings

WINDOW_S = 900
_names = itertools.count()
KINDS = ("air_quality", "crowd")
values = st.one_of(st.none(), st.floats(0, 500, allow_nan=False).map(lambda v: round(v, 3)))


def _city() -> City:
    return citygen.generate(f"win{next(_names)}x{time.time_ns() % 10**6}", 120, seed=7)


async def _summed(client: InfluxClient, kind: str, city: str, piece: Piece) -> WindowMeans:
    """The window means as the overview made them before: raw sum over count."""
    params = {
        "city": city,
        "from": format_epoch_ms(piece.start_ms),
        "to": format_epoch_ms(piece.end_ms),
    }
    sums: dict[str, dict[str, tuple[float, int]]] = {}
    for s in await client.query(window_statement(None, kind, MEAN_FIELDS[kind]), params):
        for row in s.rows():
            add_sums(sums.setdefault(str(row["device_id"]), {}), row, MEAN_FIELDS[kind])
    return {d: {f: t / n for f, (t, n) in c.items()} for d, c in sums.items() if c}


async def _loaded(url: str, database: str, points: list[Point]) -> InfluxClient:
    """A client of the database, the points written."""
    client = InfluxClient(InfluxSettings(url=url, database=database))
    await client.ensure_database()
    if points:
        await client.write(encode_many(points))
    return client


def _close(a: WindowMeans, b: WindowMeans) -> bool:
    return a.keys() == b.keys() and all(
        a[d].keys() == b[d].keys()
        and all(math.isclose(a[d][f], b[d][f], rel_tol=1e-12) for f in a[d])
        for d in a
    )


async def _same_overviews(
    client: InfluxClient, city: City, end: datetime, api: ApiSettings
) -> None:
    """The overviews of the city and a district from the means now and from the sums."""
    window = TimeRange(end - timedelta(seconds=WINDOW_S), end)
    snap = await take_snapshot(client, city, window, api, TierBook(()))
    before = await take_snapshot(client, city, window, api, TierBook(()))
    piece = Piece(None, window.start_ms, window.end_ms)
    for kind in KINDS:
        before.means[kind] = await _summed(client, kind, city.id, piece)
    for district in (None, city.districts[0].id):
        now_view = overview(snap, api, city, district).model_dump()
        old_view = overview(before, api, city, district).model_dump()
        now_view.pop("generated_at")
        old_view.pop("generated_at")
        assert now_view == old_view


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(0, 30),  # which device of the kind
            st.sampled_from(KINDS),
            st.integers(-60, WINDOW_S + 60),  # seconds before the end
            st.lists(values, min_size=6, max_size=6),
        ),
        max_size=120,
    )
)
def test_raw_window_means_are_the_sums_over_the_counts(
    influx_db: str, influxd: Influxd, rows: list[tuple[int, str, int, list[float | None]]]
) -> None:
    """Readings in, at the edges of and outside the window, with fields missing: each
    device's `mean()` per field equals its sum over its count (the overview's figure
    before), and the mean of the values written in [from, to); the overview made from
    either is the same."""
    city = _city()
    end = datetime.now(UTC).replace(microsecond=0)
    end_ms = epoch_ms(end)
    by_kind = {k: [d for d in city.devices if d.kind == k] for k in KINDS}
    points, written = [], {}
    for n, (i, kind, back_s, vals) in enumerate(rows):
        device = by_kind[kind][i % len(by_kind[kind])]
        fields = {f: v for f, v in zip(MEAN_FIELDS[kind], vals, strict=False) if v is not None}
        if kind == "crowd" and "people_count" in fields:
            fields["people_count"] = int(fields["people_count"])
        at = end_ms - back_s * 1000 - n % 7  # distinct times: no point overwrites another
        tags = {"city": city.id, "district": device.district, "device_id": device.id}
        points.append(Point(kind, tags, {"seq": n, **fields}, at))
        if end_ms - WINDOW_S * 1000 <= at < end_ms:
            for f, v in fields.items():
                written.setdefault(device.id, {}).setdefault(f, []).append(float(v))
    expected = {d: {f: sum(v) / len(v) for f, v in c.items()} for d, c in written.items()}
    span = (end_ms - WINDOW_S * 1000, end_ms)

    async def check() -> None:
        client = await _loaded(influxd.url, influx_db, points)
        api = ApiSettings(influx=client.settings)
        try:
            found: WindowMeans = {}
            for kind in KINDS:
                means, pieces = await window_means(
                    client, TierBook(()), kind, MEAN_FIELDS[kind], city.id, span
                )
                assert pieces == [Piece(None, *span)]
                assert _close(means, await _summed(client, kind, city.id, pieces[0]))
                found.update(means)
            assert _close(found, expected)
            await _same_overviews(client, city, end, api)
        finally:
            await client.close()

    asyncio.run(check())
