"""The status messages that decide a device's state: read from the few devices that ever
went offline, not from every device's status.

A device is offline by its status when its last status message in the lookback says
offline and is not older than its newest reading (`api.overview.device_state`); a device
with no reading in the lookback is offline whatever its status says. So the only last
statuses that matter are those of devices with a reading and an offline message at or
after it. Every offline message is stored twice, in `device_status` and in its
`device_offline` twin (`safecity.schema.status_points`, same tags and time), so:

1. `last()` of `device_offline` over the lookback, by device: the time of each device's
   newest offline message (only devices that went offline have series there);
2. for the devices whose newest offline message is not older than their newest reading,
   `last("state")` of `device_status` from that time on (filtered by `device_id`, so
   InfluxDB reads their series alone; above `MAX_FILTERED` of them, every device's): their
   last status.

For every other device the last status cannot make it offline: if it says offline, its
twin is in step 1 at the same time, older than the device's newest reading. The states
are the ones of `status_grouped()` over the whole lookback (`tests/api/test_offline.py`).
"""

# Statements are built only from allow-listed identifiers (quote_ident) and registry ids
# (IDENTIFIER-checked, in lastseen.device_filter); values are bound. S608 cannot see it.
# ruff: noqa: S608

from __future__ import annotations

from datetime import datetime

from api.lastseen import MAX_FILTERED, WHERE, device_filter, span_params
from api.queries import CHUNK_ROWS, flat
from safecity.influx import InfluxClient, Series, quote_ident
from safecity.readings import format_epoch_ms
from safecity.schema import DEVICE_OFFLINE, DEVICE_STATUS

OFFLINE_STATEMENT = flat(
    f'SELECT last("state") AS "state" FROM {quote_ident(DEVICE_OFFLINE)} '
    f'WHERE {WHERE} GROUP BY "device_id"',
    ("state",),
    ("device_id",),
)
Statuses = dict[str, tuple[int, str]]
"""device id -> (time ms, state) of a status message."""


def status_grouped(devices: str = "") -> str:
    """The last status of every device (and `devices`, a condition on `device_id`) over
    [$from, $to), one series a device: over the whole lookback, what the states are
    decided by (the reference of tests and benchmarks)."""
    return (
        f'SELECT last("state") AS "state" FROM {quote_ident(DEVICE_STATUS)} '
        f'WHERE {WHERE}{devices} GROUP BY "device_id"'
    )


def status_statement(devices: str = "") -> str:
    """`status_grouped` as one row a device (`flat`)."""
    return flat(status_grouped(devices), ("state",), ("device_id",))


def statuses_of(answer: list[Series]) -> Statuses:
    """device -> (time, state) of the rows of a status statement."""
    out: Statuses = {}
    for s in answer:
        for row in s.rows():
            if row.get("state") is not None:
                out[str(row["device_id"])] = (int(row["time"]), str(row["state"]))
    return out


async def newest_offline(
    influx: InfluxClient, city: str, span: tuple[datetime, datetime]
) -> dict[str, int]:
    """device id -> time (ms) of its newest offline message in [start, end) (step 1)."""
    answer = await influx.query(OFFLINE_STATEMENT, span_params(city, *span), chunk_rows=CHUNK_ROWS)
    return {d: at for d, (at, _) in statuses_of(answer).items()}


async def deciding_statuses(
    influx: InfluxClient,
    city: str,
    end: datetime,
    offline: dict[str, int],
    seen: dict[str, int],
    max_filtered: int = MAX_FILTERED,
) -> Statuses:
    """The last status before `end` of each device whose newest offline message
    (`offline`, from `newest_offline`) is not older than its newest reading (step 2)."""
    wanted = {d: at for d, at in offline.items() if d in seen and at >= seen[d]}
    if not wanted:
        return {}
    start = format_epoch_ms(min(wanted.values()))
    devices = "" if len(wanted) > max_filtered else device_filter(sorted(wanted))
    params = {**span_params(city, end, end), "from": start}
    found = statuses_of(
        await influx.query(status_statement(devices), params, chunk_rows=CHUNK_ROWS)
    )
    return {d: found[d] for d in wanted if d in found}
