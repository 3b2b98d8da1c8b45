"""Rollup tiers as code: which buckets are kept how long, their measurements and fields.

A tier is a bucket (e.g. `1h`) and how long its retention policy keeps it (e.g. `1825d`).
Every numeric field of every kind is rolled per device and per district into
`<kind>_by_device` / `<kind>_by_district` of the tier's policy `rollup_<bucket>`:
`<field>_sum`, `<field>_count`, `<field>_min` and `<field>_max` (floats but the count;
a mean is sum over count, at any coarser bucket too), states (bool and enum fields) as
`<field>_last` per device, and `readings`, the number of raw readings the bucket was
rolled from. A bucket's time is its
start, so rolling it again overwrites it: idempotent.

Late data is noticed through this contract only: the raw count of a bucket's readings
(`count("seq")` of the kind's measurement) is compared with the `readings` its rollup
recorded; a bucket whose counts differ is stale and is rolled again. Nothing else has to
tell the rollup job that a spool was replayed or a device forwarded old readings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from safecity import catalogue
from safecity.errors import QueryError

if TYPE_CHECKING:  # the client imports the schema, which imports this module
    from safecity.influx import InfluxClient

Level = Literal["device", "district"]
LEVELS: tuple[Level, ...] = ("device", "district")
LEVEL_TAGS: dict[Level, tuple[str, ...]] = {
    "device": ("city", "district", "device_id"),
    "district": ("city", "district"),
}
READINGS = "readings"
WATERMARK = "rollup_watermark"
WATERMARK_FIELD = "until_ms"
SINCE_FIELD = "since_ms"
REROLLED_FIELD = "rerolled_ms"
STATS = ("sum", "count", "min", "max")
DEFAULT_TIERS = "1m:90d,1h:1825d,1d:INF"

_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_BUCKET = re.compile(r"([1-9][0-9]{0,5})([smhd])")
_KEEP = re.compile(r"INF|([1-9][0-9]{0,6})([hdw])")


@dataclass(frozen=True, slots=True)
class Tier:
    """One rollup tier: its bucket, and how long its retention policy keeps it."""

    name: str
    every_s: int
    keep: str
    keep_s: int | None

    @property
    def policy(self) -> str:
        """Its retention policy (`rollup_<bucket>`)."""
        return f"rollup_{self.name}"

    @property
    def shard_duration(self) -> str:
        """Its policy's shard group duration: about 10,080 buckets a shard (a week of
        minutes, 420 days of hours), never longer than it keeps; rollups are sparse,
        and InfluxDB's default (7 days above 6 months kept) would mean hundreds of
        tiny shards, each with its files open."""
        days = max(1, self.every_s * 10_080 // 86_400)
        if self.keep_s is not None:
            days = min(days, max(1, self.keep_s // 86_400))
        return f"{days}d"

    def floor_ms(self, ms: int) -> int:
        """The start of the bucket holding `ms`."""
        step = self.every_s * 1000
        return ms - ms % step


def _tier(spec: str) -> Tier:
    bucket, sep, keep = spec.strip().partition(":")
    match = _BUCKET.fullmatch(bucket)
    if not sep or match is None:
        raise ValueError(f"rollup tier {spec!r}: want <bucket>:<keep>, e.g. 1h:1825d")
    every_s = int(match.group(1)) * _UNIT_S[match.group(2)]
    kept = _KEEP.fullmatch(keep)
    if kept is None:
        raise ValueError(f"rollup tier {spec!r}: keep must be INF or like 90d, 12h, 4w")
    keep_s = None if keep == "INF" else int(kept.group(1)) * _UNIT_S[kept.group(2)]
    if 86_400 % every_s and every_s % 86_400:
        raise ValueError(f"rollup tier {spec!r}: the bucket must divide a day or be whole days")
    if keep_s is not None and keep_s < 2 * every_s:
        raise ValueError(f"rollup tier {spec!r}: keeps fewer than two buckets")
    return Tier(bucket, every_s, keep, keep_s)


def parse_tiers(text: str) -> tuple[Tier, ...]:
    """Tiers from `1m:90d,1h:1825d,1d:INF` (finest first); empty text = no rollups."""
    tiers = sorted((_tier(s) for s in text.split(",") if s.strip()), key=lambda t: t.every_s)
    if len({t.every_s for t in tiers}) != len(tiers):
        raise ValueError(f"rollup tiers {text!r}: two tiers with the same bucket")
    return tuple(tiers)


def measurement(kind: str, level: Level) -> str:
    """The measurement of a kind's rollups at a level."""
    if kind not in catalogue.KINDS:
        raise KeyError(kind)
    return f"{kind}_by_{level}"


def numeric_fields(kind: str) -> tuple[str, ...]:
    """The fields rolled into sum/count/min/max (floats and ints of the catalogue)."""
    return tuple(q.name for q in catalogue.telemetry_quantities(kind) if q.type in ("float", "int"))


def state_fields(kind: str) -> tuple[str, ...]:
    """The fields rolled into their last value per device (bools and enums)."""
    return tuple(q.name for q in catalogue.telemetry_quantities(kind) if q.type in ("bool", "enum"))


def stat_field(field: str, stat: str) -> str:
    """The rollup field of one statistic of a raw field (`pm25_sum`)."""
    return f"{field}_{stat}"


def markdown_table(text: str = DEFAULT_TIERS) -> str:
    """The docs' tier table (a test keeps it equal)."""
    lines = [
        "| Tier | Bucket | Retention policy | Kept | Measurements |",
        "|---|---|---|---|---|",
    ]
    for tier in parse_tiers(text):
        names = ", ".join(f"`<kind>_by_{level}`" for level in LEVELS)
        lines.append(
            f"| `{tier.name}` | {tier.every_s} s | `{tier.policy}` | {tier.keep} | "
            f"{names}, `{WATERMARK}` |"
        )
    return "\n".join(lines) + "\n"


def keep_seconds(duration: str) -> int | None:
    """An InfluxDB retention duration (INF, 30d, 12h, 4w) in seconds; None = forever."""
    kept = _KEEP.fullmatch(duration)
    if kept is None:
        raise ValueError(f"not a retention duration: {duration!r}")
    return None if duration == "INF" else int(kept.group(1)) * _UNIT_S[kept.group(2)]


@dataclass(frozen=True, slots=True)
class Rolled:
    """The span [since_ms, until_ms) of a kind a tier has rolled (its watermark)."""

    since_ms: int
    until_ms: int
    rerolled_ms: int = 0
    """When buckets it had rolled were last rolled again for late data (0: never)."""


async def read_watermarks(influx: InfluxClient, tier: Tier) -> dict[str, Rolled]:
    """kind -> the span of that kind the tier has rolled (none before the job first ran)."""
    # Constant identifiers of this module only; no value from outside.
    statement = (
        f'SELECT last("{WATERMARK_FIELD}") AS "until", last("{SINCE_FIELD}") AS "since", '  # noqa: S608
        f'last("{REROLLED_FIELD}") AS "rerolled" FROM "{tier.policy}"."{WATERMARK}" GROUP BY "kind"'
    )
    try:
        series = await influx.query(statement)
    except QueryError as exc:
        if "not found" in str(exc):  # the policy does not exist yet: nothing rolled
            return {}
        raise
    return {
        s.tags["kind"]: Rolled(int(row["since"]), int(row["until"]), int(row.get("rerolled") or 0))
        for s in series
        for row in s.rows()
        if row.get("until") is not None and row.get("since") is not None
    }
