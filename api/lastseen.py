"""Each device's newest reading over the status lookback: exact, and cheap when most report.

The answer is the one of `grouped_statement` (`last("seq")` of every kind over the whole
lookback, grouped by device), asked in two steps so the common case reads minutes of
raw data, not a day of it:

1. recent: each kind over its own stale limit before the end (`stale_limit_s`; kinds
   of one limit share a statement). A device reporting as it should has a reading
   there, and the newest reading in the span that ends at `end` is the newest of all
   (a device's readings are all in its kind's measurement: `schema.reading_point`).
2. older: only the registry's devices that step 1 did not find (stale, offline, never
   seen), every kind over the whole lookback, filtered by `device_id` so InfluxDB reads
   their series alone; above `MAX_FILTERED` of them, every device (one `last()` over
   the lookback, the cost of a city that went silent).

Each statement answers one row a device (`api.queries.flat`).

Both steps read raw readings, so the answer needs no rollup tier and is the same with
tiers or without (tiers hold no reading times, and late data may be newer than a
tier's last roll). Devices outside the registry are not looked for in step 2: nothing
reads their state.
"""

# Statements are built only from allow-listed identifiers (quote_ident) and registry ids
# (IDENTIFIER-checked); request values travel as bound $parameters. S608 cannot see it.
# ruff: noqa: S608

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import datetime, timedelta

from api.queries import CHUNK_ROWS, flat
from api.settings import ApiSettings
from safecity import catalogue
from safecity.influx import InfluxClient, Series, quote_ident
from safecity.readings import format_ts
from safecity.registry import City
from safecity.topics import IDENTIFIER

WHERE = '"city" = $city AND time >= $from AND time < $to'
MAX_FILTERED = 4000
"""Above this many devices step 2 reads the kinds whole: a longer regex costs InfluxDB
more than the series it would skip."""


def stale_limit_s(settings: ApiSettings, kind: str) -> float:
    """Silence after which a device counts as stale: stale_after, or two of its cadences."""
    return max(settings.stale_after, 2 * catalogue.KINDS[kind].cadence_s)


def grouped_statement(kinds: Iterable[str] = catalogue.KINDS, devices: str = "") -> str:
    """`last("seq")` of every device of the kinds over [$from, $to) (and `devices`, a
    condition on `device_id`), one series a device: the whole lookback in this form is
    what `newest_readings` answers (its reference in tests and the benchmark)."""
    sources = ", ".join(quote_ident(k) for k in kinds)
    return (
        f'SELECT last("seq") AS "last" FROM {sources} WHERE {WHERE}{devices} GROUP BY "device_id"'
    )


def full_statement(kinds: Iterable[str] = catalogue.KINDS, devices: str = "") -> str:
    """`grouped_statement` as one row a device (`flat`)."""
    return flat(grouped_statement(kinds, devices), ("last",), ("device_id",))


def device_filter(devices: list[str]) -> str:
    """The condition (` AND ...`) keeping these devices' series only: a regex on
    `device_id`, which InfluxDB matches against its index, not the points."""
    for device in devices:
        if IDENTIFIER.fullmatch(device) is None:  # the registry checks it; a regex relies on it
            raise ValueError(f"not a device id: {device!r}")
    alternatives = "|".join(d.replace(".", r"\.") for d in devices)
    return f' AND "device_id" =~ /^(?:{alternatives})$/'


def _filtered(devices: list[str]) -> str:
    """`full_statement` of every kind for these devices only."""
    return full_statement(devices=device_filter(devices))


def _merge(into: dict[str, int], answers: Iterable[list[Series]]) -> None:
    for series in answers:
        for s in series:
            for row in s.rows():
                device, at = str(row["device_id"]), int(row["time"])
                into[device] = max(at, into.get(device, at))


def span_params(city: str, start: datetime, end: datetime) -> dict[str, str | int | float | bool]:
    """The bound parameters of a city and span [start, end)."""
    return {"city": city, "from": format_ts(start), "to": format_ts(end)}


def cuts(
    settings: ApiSettings, kinds: Iterable[str], start: datetime, end: datetime
) -> dict[datetime, list[str]]:
    """Where step 1 starts -> its kinds: the kind's stale limit before `end`, never before
    `start`."""
    out: dict[datetime, list[str]] = {}
    for kind in kinds:
        cut = max(start, end - timedelta(seconds=stale_limit_s(settings, kind)))
        out.setdefault(cut, []).append(kind)
    return out


async def newest_readings(
    influx: InfluxClient,
    settings: ApiSettings,
    city: City,
    span: tuple[datetime, datetime],
    max_filtered: int = MAX_FILTERED,
) -> dict[str, int]:
    """device id -> time (ms) of its newest reading in [start, end), for every device that
    has one there (the registry's devices, and others met in the recent spans)."""
    start, end = span
    seen: dict[str, int] = {}
    recent = await asyncio.gather(
        *(
            influx.query(
                full_statement(kinds), span_params(city.id, cut, end), chunk_rows=CHUNK_ROWS
            )
            for cut, kinds in cuts(settings, catalogue.KINDS, start, end).items()
        )
    )
    await asyncio.to_thread(_merge, seen, recent)  # thousands of rows: off the event loop
    missing = [d.id for d in city.devices if d.id not in seen]
    if missing:
        statement = full_statement() if len(missing) > max_filtered else _filtered(missing)
        older = await influx.query(
            statement, span_params(city.id, start, end), chunk_rows=CHUNK_ROWS
        )
        await asyncio.to_thread(_merge, seen, [older])
    return seen
