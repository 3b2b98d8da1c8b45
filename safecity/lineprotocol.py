"""InfluxDB line protocol: an encoder that always emits exactly one line, and a decoder.

Identifiers reaching here are allow-listed upstream; escaping is the second fence,
and newlines are refused outright because no escape exists for them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from safecity.errors import LineProtocolError

FieldValue = float | int | bool | str
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_MEASUREMENT_ESC = str.maketrans({",": r"\,", " ": r"\ "})
_KEY_ESC = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_STR_ESC = str.maketrans({'"': r"\"", "\\": "\\\\"})
_FORBIDDEN = re.compile(r"[\n\r\x00]")
# InfluxDB 1.x keeps a backslash literal in names and tags, so it cannot round-trip.
_FORBIDDEN_NAME = re.compile(r"[\n\r\x00\\]")


@dataclass(frozen=True, slots=True)
class Point:
    """One InfluxDB point: measurement, tags, fields and a timestamp in milliseconds."""

    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, FieldValue]
    time_ms: int


def _text(value: str, what: str) -> str:
    if _FORBIDDEN.search(value):
        raise LineProtocolError(f"{what} {value[:40]!r} contains a newline or NUL")
    return value


def _name(value: str, what: str) -> str:
    if not value:
        raise LineProtocolError(f"empty {what}")
    if _FORBIDDEN_NAME.search(value):
        raise LineProtocolError(f"{what} {value[:40]!r} contains a newline, NUL or backslash")
    return value


def _field(value: FieldValue) -> str:
    if type(value) is float:  # the common case first; bool and int subclasses below
        if not math.isfinite(value):
            raise LineProtocolError(f"non-finite float {value}")
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise LineProtocolError(f"integer {value} does not fit int64")
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LineProtocolError(f"non-finite float {value}")
        return repr(value)
    if isinstance(value, str):
        return '"' + _text(value, "string field").translate(_STR_ESC) + '"'
    raise LineProtocolError(f"unsupported field type {type(value).__name__}")


def encode(point: Point, *, time_ns: int | None = None) -> str:
    """Encode a point as one line (no trailing newline); raise LineProtocolError if impossible.

    The timestamp is the point's ms, or `time_ns` when given (a line to write at ns
    precision)."""
    fields = point.fields
    tags = point.tags
    if not fields:
        raise LineProtocolError("a point needs at least one field")
    if point.measurement.startswith("#"):
        # InfluxDB reads such a line as a comment: 204 and nothing stored.
        raise LineProtocolError(f"measurement {point.measurement[:40]!r} starts with '#'")
    if "time" in tags or "time" in fields:
        raise LineProtocolError("'time' is not a valid tag or field key in InfluxDB")
    # Series keys and field keys repeat from point to point: their checked, escaped
    # forms are memoised (bounded), so a point costs little more than its values.
    series = _series(point.measurement, tuple(tags.items()))
    field_set = ",".join(_field_key(k) + _field(v) for k, v in sorted(fields.items()))
    return f"{series} {field_set} {point.time_ms if time_ns is None else time_ns}"


@lru_cache(maxsize=16_384)
def _series(measurement: str, tags: tuple[tuple[str, str], ...]) -> str:
    parts = [_name(measurement, "measurement").translate(_MEASUREMENT_ESC)]
    for key, value in sorted(tags):
        if value == "":
            continue  # InfluxDB has no empty tag values; absent means empty
        tag_key = _name(key, "tag key").translate(_KEY_ESC)
        parts.append(f"{tag_key}={_name(value, 'tag value').translate(_KEY_ESC)}")
    return ",".join(parts)


@lru_cache(maxsize=4096)
def _field_key(key: str) -> str:
    return _name(key, "field key").translate(_KEY_ESC) + "="


def series_key(measurement: str, tags: Mapping[str, str]) -> str:
    """The escaped `measurement,tag=value,...` head of a line, as `encode` writes it."""
    if measurement.startswith("#"):
        raise LineProtocolError(f"measurement {measurement[:40]!r} starts with '#'")
    if "time" in tags:
        raise LineProtocolError("'time' is not a valid tag or field key in InfluxDB")
    return _series(measurement, tuple(tags.items()))


def field_key(key: str) -> str:
    """The escaped `key=` of a field, as `encode` writes it."""
    if key == "time":
        raise LineProtocolError("'time' is not a valid tag or field key in InfluxDB")
    return _field_key(key)


def encode_many(points: Iterable[Point]) -> bytes:
    """Encode points as a newline-terminated batch body."""
    return "".join(encode(p) + "\n" for p in points).encode()


def _split(text: str, sep: str, maxsplit: int = -1) -> list[str]:
    """Split on an unescaped separator (names and tags know no quoting)."""
    out, cur, i = [], [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i : i + 2])
            i += 2
            continue
        if c == sep and maxsplit != 0:
            out.append("".join(cur))
            cur = []
            maxsplit -= 1
        else:
            cur.append(c)
        i += 1
    out.append("".join(cur))
    return out


def _fields(text: str) -> dict[str, FieldValue]:
    """Parse a field set; only string values are quoted, so track quotes only there."""
    fields: dict[str, FieldValue] = {}
    i = 0
    while i < len(text):
        key = _split(text[i:], "=", 1)[0]
        i += len(key) + 1
        if text[i : i + 1] == '"':
            j = i + 1
            while text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            raw = text[i : j + 1]
            i = j + 2  # past the closing quote and the comma
        else:
            raw = _split(text[i:], ",", 1)[0]
            i += len(raw) + 1
        fields[_unescape(key)] = _decode_field(raw)
    return fields


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _decode_field(raw: str) -> FieldValue:
    if raw.startswith('"'):
        return _unescape(raw[1:-1])
    if raw in ("true", "false"):
        return raw == "true"
    if raw.endswith("i"):
        return int(raw[:-1])
    return float(raw)


def decode(line: str) -> Point:
    """Decode one line written by `encode` (not a full parser: what `encode` writes)."""
    if "\\" not in line and '"' not in line:
        # No escape and no string field (most readings): plain splits, several times faster.
        head, _, rest = line.partition(" ")
        fields_raw, _, ts = rest.rpartition(" ")
        series = head.split(",")
        return Point(
            series[0],
            dict(t.split("=", 1) for t in series[1:]),
            {k: _decode_field(v) for k, v in (f.split("=", 1) for f in fields_raw.split(","))},
            int(ts),
        )
    head, rest = _split(line, " ", 1)
    fields_raw, ts = rest.rsplit(" ", 1)
    series = _split(head, ",")
    tags = dict(_split(t, "=", 1) for t in series[1:])
    return Point(
        _unescape(series[0]),
        {_unescape(k): _unescape(v) for k, v in tags.items()},
        _fields(fields_raw),
        int(ts),
    )
