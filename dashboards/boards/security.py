"""The sensor network's own security."""

# Every query here is assembled from module constants and catalogue/registry identifiers
# (allow-listed), never from user input: S608 does not apply.
# ruff: noqa: S608

from __future__ import annotations

from dashboards.panels import (
    CITY,
    EVENTS_FROM,
    SECURITY_FROM,
    WHERE,
    Board,
    _devices_offline,
    _mean_by_district,
    _stats,
    _thresholds,
)
from safecity.schema import DEVICE_STATUS, INGEST_STATS, REJECT_REASONS, SECURITY_EVENTS


def _security(select: str, where: str = "", group: str = "") -> str:
    query = f"SELECT {select} FROM {SECURITY_FROM} WHERE $timeFilter AND {CITY}{where}"
    return f"{query} GROUP BY {group}" if group else query


def _security_type(*types: str) -> str:
    return " AND (" + " OR ".join(f"\"type\" = '{t}'" for t in types) + ")"


def board() -> Board:
    """The sensor network's own security: attacks, rejections, offline devices, radio health."""
    b = Board(
        "safecity-security",
        "safecity / Network and cyber security",
        "Security events (broker auth failures, spoofing, unknown devices, floods), dead "
        "letters by reason, offline devices, tampering, radio health.",
        ["security"],
    )
    b.standard_variables()
    events_doc = (
        f"From the `{SECURITY_EVENTS}` measurement (README): ingest's attack rejections and "
        "the broker log's auth failures."
    )
    b.timeseries(
        "Security events by type",
        _security('sum("count")', group='time($__interval), "type" fill(0)'),
        alias="$tag_type",
        custom={"drawStyle": "bars", "stacking": {"mode": "normal"}},
        w=24,
        description=events_doc,
    )
    for title, types in (
        ("Broker auth failures", ("auth_failure",)),
        ("Spoofing attempts (identity mismatch)", ("identity_mismatch",)),
        ("Unknown devices", ("unknown_device",)),
        ("Floods (rate limited)", ("rate_limited",)),
    ):
        b.stat(
            title,
            _security('sum("count")', _security_type(*types)),
            thresholds=_thresholds((None, "green"), (1, "red")),
            description=events_doc,
        )
    b.table(
        "Targeted devices",
        _security(
            'sum("count") AS "events"',
            ' AND "district" =~ /^$district$/',
            '"type", "district", "device_id"',
        ),
        w=12,
        h=10,
        description="Registry devices named in security events (spoofed, flooding, replaying).",
    )
    b.table(
        "Latest security events",
        _security(
            '"count", "client_id", "detail"', group='"source", "type" ORDER BY time DESC LIMIT 50'
        ),
        w=12,
        h=10,
        description="`client_id`: as logged or claimed, sanitised (never a tag: unbounded).",
    )
    by_reason = ", ".join(f'sum("rejected_{r}") AS "{r}"' for r in REJECT_REASONS)
    b.timeseries(
        "Rejections by reason (dead letters)",
        _stats(by_reason),
        custom={"drawStyle": "bars", "stacking": {"mode": "normal"}},
        w=24,
        description=f"From the `{INGEST_STATS}` measurement that ingest writes (see README).",
    )
    b.stat(
        "Devices offline (last status)",
        _devices_offline(),
        thresholds=_thresholds((None, "green"), (1, "orange")),
    )
    b.table(
        "Offline devices",
        f'SELECT "online", "state", "kind", "reason" FROM ({_latest_status()}) '
        'WHERE "online" = false GROUP BY "district", "device_id"',
        w=12,
        h=10,
    )
    b.table(
        "Camera tamper / offline events",
        f'SELECT "seq", "cause", "silent_s" FROM {EVENTS_FROM} WHERE {WHERE} AND "type" =~ '
        '/^(camera_tamper|camera_offline)$/ GROUP BY "type", "district", "device_id" '
        "ORDER BY time DESC LIMIT 50",
        w=12,
        h=10,
    )
    b.timeseries(
        "Radio: RSSI by district (device_health)",
        _mean_by_district("device_health", "rssi"),
        alias="$tag_district",
        unit="dBm",
    )
    b.timeseries(
        "Battery by district (device_health)",
        _mean_by_district("device_health", "battery", " * 100"),
        alias="$tag_district",
        unit="percent",
    )
    return b


def _latest_status() -> str:
    return (
        'SELECT last("online") AS "online", last("state") AS "state", last("kind") AS "kind", '
        f'last("reason") AS "reason" FROM "{DEVICE_STATUS}" WHERE {WHERE} '
        'GROUP BY "district", "device_id"'
    )
