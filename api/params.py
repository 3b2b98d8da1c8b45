"""Time windows and buckets from query parameters, bounded by the settings (422 with a reason).

`from`/`to` are RFC 3339 (naive = UTC); a window is [from, to). No window is
refused: it is held to `max_range` (its newest part), buckets to at least
`min_bucket` and at most `max_points` per window, so no request can make InfluxDB
scan or return without bound; every response states the window and bucket used.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from api.errors import bad_param
from api.models import Window
from api.settings import ApiSettings
from safecity.readings import epoch_ms, format_ts, truncate_ms

_EVERY = re.compile(r"^([1-9][0-9]{0,6})(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
# InfluxDB stores int64 nanoseconds (years 1677-2262); keep requests well inside.
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(2200, 1, 1, tzinfo=UTC)
EVERY_PATTERN = _EVERY.pattern


@dataclass(frozen=True, slots=True)
class TimeRange:
    """A validated window [start, end)."""

    start: datetime
    end: datetime

    @property
    def seconds(self) -> float:
        """Its length in seconds."""
        return (self.end - self.start).total_seconds()

    @property
    def start_ms(self) -> int:
        """Start, epoch ms."""
        return epoch_ms(self.start)

    @property
    def end_ms(self) -> int:
        """End, epoch ms."""
        return epoch_ms(self.end)

    def params(self) -> dict[str, str]:
        """The bound parameters `$from` and `$to` (RFC 3339, ms)."""
        return {"from": format_ts(self.start), "to": format_ts(self.end)}

    def model(self) -> Window:
        """The response view of the window."""
        return Window(
            **{"from": format_ts(self.start), "to": format_ts(self.end)}, seconds=self.seconds
        )


_RFC3339 = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})?$"
)


def parse_instant(value: object) -> object:
    """An RFC 3339 date-time as an aware UTC datetime (far dates held to 1970..2200).

    Anything else (an epoch number such as `0.5`, a bare date) is left to fail
    validation: a window is never given in other units.
    """
    if not isinstance(value, str) or _RFC3339.fullmatch(value) is None:
        raise ValueError("must be an RFC 3339 date-time, e.g. 2026-01-15T06:00:00Z")
    try:
        parsed = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("must be an RFC 3339 date-time, e.g. 2026-01-15T06:00:00Z") from None
    if parsed.tzinfo is None:
        return _clamp(parsed.replace(tzinfo=UTC))
    try:
        return _clamp(parsed.astimezone(UTC))
    except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00: before anything we keep
        return _EARLIEST if parsed.year < 2000 else _LATEST


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _clamp(value: datetime) -> datetime:
    return min(max(value, _EARLIEST), _LATEST)


def now() -> datetime:
    """The current time in UTC, to the millisecond (what InfluxDB keeps)."""
    return truncate_ms(datetime.now(UTC))


def time_range(
    settings: ApiSettings,
    start: datetime | None,
    end: datetime | None,
    default: timedelta,
    longest_s: float | None = None,
) -> TimeRange:
    """[from, to) from the parameters, never refused (the response's window says what
    was covered): `to` defaults to now and `from` to `to - default`; both are held
    within 1970..2200; a `from` not before `to` is an empty window; a window longer
    than `longest_s` (default `max_range`; `inf` = no limit, for what a rollup tier
    keeps forever) keeps its newest `longest_s`."""
    to = truncate_ms(_clamp(_utc(end))) if end is not None else now()
    frm = truncate_ms(_clamp(_utc(start) if start is not None else to - default))
    if frm >= to:
        return TimeRange(frm, frm)
    limit = settings.max_range if longest_s is None else longest_s
    if math.isinf(limit):
        return TimeRange(frm, to)
    longest = timedelta(seconds=limit)
    if to - frm > longest:
        frm = truncate_ms(to - longest)
    return TimeRange(frm, to)


def bucket(
    settings: ApiSettings, every: str | None, window: TimeRange, grid: tuple[int, ...] = ()
) -> int:
    """The bucket in whole seconds: `every` (e.g. 30s, 5m, 1h, 1d) or about 300 buckets,
    raised to `min_bucket` and to what keeps at most `max_points` buckets in the window,
    and at most `max_range` (the response's `every_s` says what was used). A bucket not
    asked for as such (the default, or one raised) is rounded up to whole buckets of the
    coarsest of `grid` (the rollup tiers' buckets) not above it, so a tier can serve it."""
    if every is None:
        seconds = math.ceil(window.seconds / 300)
    else:
        match = _EVERY.fullmatch(every)
        if match is None:
            raise bad_param("query", "every", "must be a duration like 30s, 5m, 1h or 1d")
        seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    fewest = math.ceil(window.seconds / settings.max_points)
    asked = seconds if every is not None else 0
    seconds = max(seconds, math.ceil(settings.min_bucket), fewest)
    if seconds != asked:
        step = max((g for g in grid if g <= seconds), default=1)
        seconds = -(-seconds // step) * step
    return min(seconds, max(math.ceil(settings.min_bucket), math.floor(settings.max_range)))
