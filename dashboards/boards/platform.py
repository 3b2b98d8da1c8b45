"""The platform's own health."""

# Every query here is assembled from module constants and catalogue/registry identifiers
# (allow-listed), never from user input: S608 does not apply.
# ruff: noqa: S608

from __future__ import annotations

from dashboards.panels import (
    CITY,
    INGEST_LAG_ALERT_S,
    WHERE,
    Board,
    _devices_offline,
    _devices_online,
    _limit,
    _stats,
    _thresholds,
)
from safecity.schema import INGEST_STATS


def board() -> Board:
    """The platform's own health: ingest throughput, lag, spool, dead letters, broker drops."""
    b = Board(
        "safecity-platform",
        "safecity / Platform health",
        "Ingest rate, lag, pending and spool, dead letters, write errors, broker drops.",
        ["platform"],
    )
    b.standard_variables(kind=True)
    b.timeseries(
        "Ingest rate (messages/s)",
        _stats('sum("received") / $__interval_ms * 1000 AS "received"'),
        _stats('sum("written") / $__interval_ms * 1000 AS "written"'),
        unit="reqps",
        description=f"From `{INGEST_STATS}` (counters are per-point deltas).",
    )
    b.timeseries(
        "Ingest lag by worker",
        _stats('max("lag_seconds")', 'time($__interval), "worker_id" fill(null)'),
        alias="$tag_worker_id",
        unit="s",
        thresholds=_limit(INGEST_LAG_ALERT_S),
        custom={"thresholdsStyle": {"mode": "line"}},
    )
    b.timeseries(
        "Pending and spooled messages",
        _stats(
            'max("pending") AS "pending", max("spool_messages") AS "spooled"',
            "time($__interval) fill(null)",
        ),
        w=8,
    )
    b.timeseries(
        "Spool size",
        _stats('max("spool_bytes")', 'time($__interval), "worker_id" fill(null)'),
        alias="$tag_worker_id",
        unit="bytes",
        w=8,
    )
    b.timeseries(
        "Dead letters, write errors, redeliveries",
        _stats(
            'sum("rejected") AS "dead letters", sum("write_errors") AS "write errors", '
            'sum("redelivered") AS "redelivered"'
        ),
        w=8,
    )
    b.stat(
        "Broker drops",
        f'SELECT sum("broker_dropped") FROM "{INGEST_STATS}" WHERE $timeFilter AND {CITY}',
        thresholds=_thresholds((None, "green"), (1, "red")),
    )
    b.stat(
        "Workers connected",
        f'SELECT count("c") FROM (SELECT last("mqtt_connected") AS "c" FROM "{INGEST_STATS}" '
        f'WHERE $timeFilter AND {CITY} GROUP BY "worker_id") WHERE "c" = true',
        thresholds=_thresholds((None, "red"), (1, "green")),
    )
    b.stat(
        "Devices online",
        _devices_online(),
        thresholds=_thresholds((None, "blue")),
    )
    b.stat(
        "Devices offline",
        _devices_offline(),
        thresholds=_thresholds((None, "green"), (1, "orange")),
    )
    b.timeseries(
        "Readings stored per kind",
        f'SELECT count("seq") FROM /^$kind$/ WHERE {WHERE} GROUP BY time($__interval) fill(0)',
        alias="$measurement",
        custom={"drawStyle": "bars", "stacking": {"mode": "normal"}},
        w=24,
        description="Straight from the kind measurements: what ingest actually stored.",
    )
    return b
