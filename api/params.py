"""Time windows and buckets from query parameters, bounded by the settings (422 with a reason).

`from`/`to` are RFC 3339 (naive = UTC); a window is [from, to). Ranges longer than
`max_range`, buckets shorter than `min_bucket` and more than `max_points` buckets
are refused, so no request can make InfluxDB scan or return without bound.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from api.errors import bad_param
from api.models import Window
from api.settings import ApiSettings
from safecity.readings import format_ts

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
        return int(self.start.timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        """End, epoch ms."""
        return int(self.end.timestamp() * 1000)

    def params(self) -> dict[str, str]:
        """The bound parameters `$from` and `$to` (RFC 3339, ms)."""
        return {"from": format_ts(self.start), "to": format_ts(self.end)}

    def model(self) -> Window:
        """The response view of the window."""
        return Window(
            **{"from": format_ts(self.start), "to": format_ts(self.end)}, seconds=self.seconds
        )


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def now() -> datetime:
    """The current time in UTC, to the millisecond (what InfluxDB keeps)."""
    t = datetime.now(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def time_range(
    settings: ApiSettings,
    start: datetime | None,
    end: datetime | None,
    default: timedelta,
) -> TimeRange:
    """[from, to) from the parameters; `to` defaults to now, `from` to `to - default`."""
    for name, value in (("from", start), ("to", end)):
        if value is not None and not _EARLIEST <= _utc(value) < _LATEST:
            raise bad_param("query", name, "must be between 1970-01-01 and 2200-01-01 (UTC)")
    to = _utc(end) if end is not None else now()
    frm = _utc(start) if start is not None else to - default
    frm = frm.replace(microsecond=frm.microsecond // 1000 * 1000)
    to = to.replace(microsecond=to.microsecond // 1000 * 1000)
    if frm >= to:
        raise bad_param("query", "from", "must be before 'to'")
    span = (to - frm).total_seconds()
    if span > settings.max_range:
        raise bad_param(
            "query",
            "from",
            f"the window is {span:.0f}s; at most {settings.max_range:.0f}s (max_range) allowed",
        )
    return TimeRange(frm, to)


def bucket(settings: ApiSettings, every: str | None, window: TimeRange) -> int:
    """The bucket in whole seconds: `every` (e.g. 30s, 5m, 1h, 1d) or about 300 buckets."""
    if every is None:
        seconds = max(math.ceil(settings.min_bucket), math.ceil(window.seconds / 300))
    else:
        match = _EVERY.fullmatch(every)
        if match is None:
            raise bad_param("query", "every", "must be a duration like 30s, 5m, 1h or 1d")
        seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds < settings.min_bucket:
        raise bad_param(
            "query", "every", f"must be at least {settings.min_bucket:.0f}s (min_bucket)"
        )
    if seconds > settings.max_range:
        raise bad_param("query", "every", f"must be at most {settings.max_range:.0f}s")
    buckets = math.ceil(window.seconds / seconds)
    if buckets > settings.max_points:
        raise bad_param(
            "query",
            "every",
            f"{buckets} buckets in the window; at most {settings.max_points} (max_points): "
            "use a larger bucket or a shorter window",
        )
    return seconds
