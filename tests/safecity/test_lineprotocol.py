"""Line protocol: one point is always exactly one line, it round-trips, and InfluxDB agrees."""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control.stack import Influxd
from safecity.errors import LineProtocolError
from safecity.influx import InfluxClient
from safecity.lineprotocol import (
    INT64_MAX,
    INT64_MIN,
    FieldValue,
    Point,
    decode,
    encode,
    encode_many,
)
from safecity.settings import InfluxSettings

# Printable text (no control, format or separator characters except the ASCII space),
# and no backslash: InfluxDB keeps it literal in names, so the encoder refuses it.
name_chars = st.characters(
    codec="utf-8", exclude_categories=("C", "Z"), include_characters=" ", exclude_characters="\\"
)
# 'time' as a key and a leading '#' are refused by the encoder (InfluxDB drops them).
names = st.text(name_chars, min_size=1, max_size=12).filter(
    lambda s: s != "time" and not s.startswith("#")
)
# String field values may hold quotes, backslashes, tabs: anything but newline, CR and NUL.
string_chars = st.characters(codec="utf-8", exclude_characters="\n\r\x00")
field_values: st.SearchStrategy[FieldValue] = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(INT64_MIN, INT64_MAX),
    st.booleans(),
    st.text(string_chars, max_size=20),
)
times = st.integers(-(2**41), 2**42)


@st.composite
def points(draw: st.DrawFn, name: st.SearchStrategy[str] = names) -> Point:
    tags = draw(st.dictionaries(name, name, max_size=4))
    fields = draw(
        st.dictionaries(name.filter(lambda k: k not in tags), field_values, min_size=1, max_size=4)
    )
    return Point(draw(name), tags, fields, draw(times))


def _typed(fields: Mapping[str, FieldValue]) -> dict[str, tuple[type, FieldValue]]:
    """Fields with their Python types: 1 == 1.0 == True must not pass as equal."""
    return {k: (type(v), v) for k, v in fields.items()}


def _assert_same(a: Point, b: Point) -> None:
    assert b == a
    assert _typed(b.fields) == _typed(a.fields)


# --- pure encode/decode ------------------------------------------------------------------


@settings(max_examples=100)
@given(points())
def test_encode_is_one_line_and_round_trips(point: Point) -> None:
    line = encode(point)
    assert "\n" not in line
    assert "\r" not in line
    assert "\x00" not in line
    _assert_same(point, decode(line))


@given(st.lists(points(), min_size=1, max_size=10))
def test_encode_many_is_one_line_per_point(batch: list[Point]) -> None:
    body = encode_many(batch)
    assert body.endswith(b"\n")
    lines = body.decode().split("\n")[:-1]
    assert len(lines) == len(batch)
    for point, line in zip(batch, lines, strict=True):
        assert line == encode(point)


def test_known_line() -> None:
    point = Point(
        "air quality,x",
        {"district": "mirzo ulugbek", "a=b": "c,d"},
        {"pm25": 12.5, "seq": 3, "ok": True, "note": 'say "hi" \\ bye'},
        1_768_456_799_123,
    )
    assert encode(point) == (
        r"air\ quality\,x,a\=b=c\,d,district=mirzo\ ulugbek "
        r'note="say \"hi\" \\ bye",ok=true,pm25=12.5,seq=3i 1768456799123'
    )
    _assert_same(point, decode(encode(point)))


def test_empty_tag_values_are_left_out() -> None:
    point = Point("m", {"a": "", "b": "x"}, {"f": 1.0}, 0)
    assert encode(point) == "m,b=x f=1.0 0"


def _bad_points(bad: str) -> list[Point]:
    return [
        Point(bad, {}, {"f": 1.0}, 0),
        Point("m", {bad: "v"}, {"f": 1.0}, 0),
        Point("m", {"t": bad}, {"f": 1.0}, 0),
        Point("m", {}, {bad: 1.0}, 0),
        Point("m", {}, {"f": bad}, 0),
    ]


@pytest.mark.parametrize("char", ["\n", "\r", "\x00"], ids=["newline", "cr", "nul"])
@given(prefix=st.text(name_chars, max_size=5), suffix=st.text(name_chars, max_size=5))
def test_newline_cr_nul_anywhere_refused(char: str, prefix: str, suffix: str) -> None:
    bad = prefix + char + suffix
    for point in _bad_points(bad):
        with pytest.raises(LineProtocolError):
            encode(point)


def test_newline_injection_refused() -> None:
    injected = 'x" 1\nevil,device_id=other value=666 1\nm f="y'
    for point in _bad_points(injected):
        with pytest.raises(LineProtocolError):
            encode(point)
        with pytest.raises(LineProtocolError):
            encode_many([Point("ok", {}, {"f": 1.0}, 0), point])


@pytest.mark.parametrize("where", ["measurement", "tag key", "tag value", "field key"])
def test_backslash_in_names_refused(where: str) -> None:
    point = {
        "measurement": Point("a\\b", {}, {"f": 1.0}, 0),
        "tag key": Point("m", {"a\\": "v"}, {"f": 1.0}, 0),
        "tag value": Point("m", {"t": "\\"}, {"f": 1.0}, 0),
        "field key": Point("m", {}, {"f\\": 1.0}, 0),
    }[where]
    with pytest.raises(LineProtocolError):
        encode(point)


@pytest.mark.parametrize(
    "value",
    [math.nan, math.inf, -math.inf, INT64_MAX + 1, INT64_MIN - 1, 2**64, None, b"bytes", [1]],
    ids=["nan", "inf", "-inf", "int64+1", "int64-1", "2**64", "none", "bytes", "list"],
)
def test_unwritable_field_values_refused(value: Any) -> None:
    with pytest.raises(LineProtocolError):
        encode(Point("m", {}, {"f": value}, 0))


def test_int64_limits_accepted() -> None:
    point = Point("m", {}, {"lo": INT64_MIN, "hi": INT64_MAX}, 0)
    assert encode(point) == f"m hi={INT64_MAX}i,lo={INT64_MIN}i 0"
    _assert_same(point, decode(encode(point)))


def test_point_needs_a_field_and_names() -> None:
    with pytest.raises(LineProtocolError):
        encode(Point("m", {"t": "v"}, {}, 0))
    with pytest.raises(LineProtocolError):
        encode(Point("", {}, {"f": 1.0}, 0))
    with pytest.raises(LineProtocolError):
        encode(Point("m", {"": "v"}, {"f": 1.0}, 0))
    with pytest.raises(LineProtocolError):
        encode(Point("m", {}, {"": 1.0}, 0))


# --- the real thing: what InfluxDB holds -----------------------------------------------

NASTY = [
    "a,b",
    "a b",
    "a=b",
    'a"b',
    '"quoted"',
    " lead",
    "trail ",
    "=",
    ",",
    "x=1,y=2 z=3",
    "Toshkent shahri",
    "Тошкент",
    "東京",
    "😀🚨",
    "a'b",
    "{json}",
]


def _nasty_points() -> list[Point]:
    out = []
    for i, text in enumerate(NASTY):
        out.append(
            Point(
                f"m{i} {text}",
                {"city": text, f"k {text}": "v", "n": str(i)},
                {
                    f"f {text}": float(i) + 0.25,
                    "i": -(2**62) + i,
                    "b": i % 2 == 0,
                    "s": f'{text} \\ "q" \\" end\\',
                    "big": 1e300,
                    "tiny": 5e-324,
                    "neg": -0.5,
                },
                1_768_456_799_000 + i,
            )
        )
    return out


def _ident(name: str) -> str:
    return '"' + name.replace('"', '\\"') + '"'


async def _stored(client: InfluxClient, measurement: str) -> tuple[list[Any], dict[str, str]]:
    """(series, field types) of one measurement, as InfluxDB reports them."""
    # The measurement is quoted by _ident; this is the test's own, trusted data.
    series = await client.query(f"SELECT * FROM {_ident(measurement)} GROUP BY *")  # noqa: S608
    keys = await client.query(f"SHOW FIELD KEYS FROM {_ident(measurement)}")
    types = {row["fieldKey"]: row["fieldType"] for s in keys for row in s.rows()}
    return series, types


_INFLUX_TYPE = {float: "float", int: "integer", bool: "boolean", str: "string"}


def _check_stored(point: Point, series: list[Any], types: dict[str, str]) -> None:
    assert len(series) == 1, (point, series)
    s = series[0]
    assert s.name == point.measurement
    # GROUP BY * lists every tag key of the measurement; this point's are all non-empty.
    assert {k: v for k, v in s.tags.items() if v != ""} == dict(point.tags)
    assert len(s.values) == 1, s
    row = dict(zip(s.columns, s.values[0], strict=True))
    assert row.pop("time") == point.time_ms
    assert {k: v for k, v in row.items() if v is not None}.keys() == point.fields.keys()
    assert types == {k: _INFLUX_TYPE[type(v)] for k, v in point.fields.items()}
    for key, expected in point.fields.items():
        got = row[key]
        if isinstance(expected, float):
            # JSON shows an integral float as an integer; the type is checked above.
            assert isinstance(got, int | float)
            assert not isinstance(got, bool)
            assert float(got) == expected, key
        else:
            assert type(got) is type(expected), key
            assert got == expected, key


async def _write_and_read(url: str, database: str, batch: list[Point]) -> None:
    client = InfluxClient(InfluxSettings(url=url, database=database, retention_policy="autogen"))
    try:
        await client.write(encode_many(batch))
        for point in batch:
            series, types = await _stored(client, point.measurement)
            _check_stored(point, series, types)
    finally:
        await client.close()


def test_nasty_strings_decode_round_trip() -> None:
    for point in _nasty_points():
        _assert_same(point, decode(encode(point)))


def test_nasty_strings_stored_exactly(influxd: Influxd, influx_db: str) -> None:
    asyncio.run(_write_and_read(influxd.url, influx_db, _nasty_points()))


@pytest.fixture
def fresh_databases(influxd: Influxd) -> Iterator[list[str]]:
    created: list[str] = []
    yield created
    for name in created:
        httpx.post(f"{influxd.url}/query", data={"q": f'DROP DATABASE "{name}"'}, timeout=10)


# InfluxDB refuses "time" as a tag or field key and skips lines starting with '#';
# those are pinned separately below, so the generated names leave them out.
real_names = names.filter(lambda s: s != "time" and not s.startswith("#"))


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    batch=st.lists(points(real_names), min_size=1, max_size=5, unique_by=lambda p: p.measurement)
)
def test_generated_points_stored_exactly(
    influxd: Influxd, fresh_databases: list[str], batch: list[Point]
) -> None:
    database = f"lp_{secrets.token_hex(6)}"
    response = httpx.post(
        f"{influxd.url}/query", data={"q": f'CREATE DATABASE "{database}"'}, timeout=10
    )
    response.raise_for_status()
    fresh_databases.append(database)
    asyncio.run(_write_and_read(influxd.url, database, batch))


@pytest.mark.parametrize(
    "point",
    [
        pytest.param(Point("#comment", {"t": "v"}, {"f": 1.0}, 1000), id="measurement-hash"),
        pytest.param(Point("m", {"time": "v"}, {"f": 1.0}, 1000), id="tag-key-time"),
        pytest.param(Point("m", {"t": "v"}, {"time": 1.0}, 1000), id="field-key-time"),
    ],
)
def test_points_influxdb_would_drop_are_refused_or_stored(
    influxd: Influxd, influx_db: str, point: Point
) -> None:
    """Either the encoder refuses the point, or InfluxDB stores exactly it: never a silent drop.

    InfluxDB 1.x skips a line whose measurement starts with '#' (a comment, 204 and
    nothing stored) and refuses a tag or field key named `time` (400 partial write).
    """
    try:
        encode(point)
    except LineProtocolError:
        return
    asyncio.run(_write_and_read(influxd.url, influx_db, [point]))
