"""InfluxClient against a real influxd: set-up, writes, bound queries, and each failure's error."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from control.stack import Influxd
from safecity.errors import (
    QueryError,
    StorageAuthError,
    StorageError,
    StorageUnavailableError,
    WriteRejectedError,
)
from safecity.influx import InfluxClient, quote_ident
from safecity.lineprotocol import Point, encode_many
from safecity.settings import InfluxSettings

T = TypeVar("T")


def _run(settings: InfluxSettings, action: Callable[[InfluxClient], Awaitable[T]]) -> T:
    async def main() -> T:
        client = InfluxClient(settings)
        try:
            return await action(client)
        finally:
            await client.close()

    return asyncio.run(main())


def _now_ms() -> int:
    # Whole seconds in the recent past: inside any retention policy used here.
    return (int(time.time()) - 60) * 1000


async def _retention_policies(client: InfluxClient) -> dict[str, dict[str, Any]]:
    database = quote_ident(client.settings.database)
    series = await client.query(f"SHOW RETENTION POLICIES ON {database}")
    return {row["name"]: row for s in series for row in s.rows()}


def test_ping(influxd: Influxd) -> None:
    assert _run(InfluxSettings(url=influxd.url), lambda c: c.ping()) is True


def test_ensure_database_is_idempotent_and_alters_retention(
    influxd: Influxd, influx_db: str
) -> None:
    settings = InfluxSettings(url=influxd.url, database=influx_db, retention_duration="30d")

    async def twice(client: InfluxClient) -> dict[str, dict[str, Any]]:
        await client.ensure_database()
        await client.ensure_database()
        return await _retention_policies(client)

    policies = _run(settings, twice)
    assert policies["raw"]["duration"] == "720h0m0s"
    assert policies["raw"]["default"] is True

    changed = settings.model_copy(update={"retention_duration": "2w"})

    async def alter(client: InfluxClient) -> dict[str, dict[str, Any]]:
        await client.ensure_database()
        return await _retention_policies(client)

    policies = _run(changed, alter)
    assert policies["raw"]["duration"] == "336h0m0s"
    assert policies["raw"]["default"] is True
    # Same again: the ALTER path is idempotent too.
    assert _run(changed, alter)["raw"]["duration"] == "336h0m0s"


def test_ensure_database_creates_a_missing_database(influxd: Influxd, influx_db: str) -> None:
    name = influx_db + "_new"
    settings = InfluxSettings(url=influxd.url, database=name, retention_policy="short")

    async def main(client: InfluxClient) -> tuple[list[str], dict[str, dict[str, Any]]]:
        try:
            await client.ensure_database()
            series = await client.query("SHOW DATABASES")
            return [r["name"] for s in series for r in s.rows()], await _retention_policies(client)
        finally:
            await client.execute(f"DROP DATABASE {quote_ident(name)}")

    databases, policies = _run(settings, main)
    assert name in databases
    assert policies["short"]["default"] is True


@pytest.mark.parametrize("gzip", [True, False], ids=["gzip", "plain"])
def test_write_and_query_with_bound_params(influxd: Influxd, influx_db: str, gzip: bool) -> None:
    settings = InfluxSettings(url=influxd.url, database=influx_db, gzip=gzip)
    ts = _now_ms()
    points = [
        Point(
            "air_quality",
            {"city": "tashkent", "district": "chilanzar", "device_id": device},
            {"pm25": pm25, "seq": seq},
            ts,
        )
        for device, pm25, seq in [("aq-1", 12.5, 1), ("aq-2", 80.0, 2), ("aq-3", 3.25, 3)]
    ]

    async def main(client: InfluxClient) -> tuple[list[dict[str, Any]], list[Any]]:
        await client.ensure_database()
        await client.write(encode_many(points))
        rows = [
            row
            for s in await client.query(
                'SELECT "pm25", "seq" FROM "air_quality" WHERE "device_id" = $device_id GROUP BY *',
                {"device_id": "aq-2"},
            )
            for row in s.rows()
        ]
        # A bound value is a value, never InfluxQL: the injection finds nothing.
        injected = await client.query(
            'SELECT * FROM "air_quality" WHERE "device_id" = $device_id',
            {"device_id": "aq-2' OR '1'='1"},
        )
        return rows, injected

    rows, injected = _run(settings, main)
    assert rows == [
        {
            "city": "tashkent",
            "district": "chilanzar",
            "device_id": "aq-2",
            "time": ts,
            "pm25": 80,
            "seq": 2,
        }
    ]
    assert injected == []


def test_query_with_numeric_and_time_params(influxd: Influxd, influx_db: str) -> None:
    settings = InfluxSettings(url=influxd.url, database=influx_db, retention_policy="autogen")
    base = 1_700_000_000_000
    points = [Point("noise", {"device_id": "n-1"}, {"laeq": float(i)}, base + i) for i in range(10)]

    async def main(client: InfluxClient) -> list[dict[str, Any]]:
        await client.write(encode_many(points))
        series = await client.query(
            'SELECT "laeq" FROM "noise" WHERE "laeq" >= $low AND time >= $since',
            {"low": 5.0, "since": "2023-11-14T22:13:20.007Z"},
        )
        return [row for s in series for row in s.rows()]

    rows = _run(settings, main)
    assert [r["time"] for r in rows] == [base + 7, base + 8, base + 9]


def test_field_type_conflict_is_a_partial_write(influxd: Influxd, influx_db: str) -> None:
    settings = InfluxSettings(url=influxd.url, database=influx_db)
    ts = _now_ms()
    first = [Point("traffic", {"device_id": "t-1"}, {"intensity": 100.0}, ts)]
    mixed = [
        Point("traffic", {"device_id": "t-2"}, {"intensity": 200.0}, ts),
        # intensity is a float in this shard: a string is a field type conflict.
        Point("traffic", {"device_id": "t-3"}, {"intensity": "lots"}, ts),
        Point("traffic", {"device_id": "t-4"}, {"intensity": 400.0}, ts),
    ]

    async def main(client: InfluxClient) -> tuple[WriteRejectedError, list[dict[str, Any]]]:
        await client.ensure_database()
        await client.write(encode_many(first))
        with pytest.raises(WriteRejectedError) as info:
            await client.write(encode_many(mixed))
        series = await client.query('SELECT "intensity" FROM "traffic" GROUP BY "device_id"')
        return info.value, [row for s in series for row in s.rows()]

    error, rows = _run(settings, main)
    assert error.status == 400
    assert error.partial is True
    assert "conflict" in error.message
    assert isinstance(error, StorageError)
    stored = {r["device_id"]: r["intensity"] for r in rows}
    assert stored == {"t-1": 100, "t-2": 200, "t-4": 400}


def test_unparseable_line_is_rejected(influxd: Influxd, influx_db: str) -> None:
    settings = InfluxSettings(url=influxd.url, database=influx_db, retention_policy="autogen")

    async def main(client: InfluxClient) -> WriteRejectedError:
        with pytest.raises(WriteRejectedError) as info:
            await client.write(b"this is not line protocol\n")
        return info.value

    error = _run(settings, main)
    assert error.status == 400
    assert error.partial is False


def test_write_to_missing_database_needs_an_operator(influxd: Influxd) -> None:
    settings = InfluxSettings(url=influxd.url, database="no_such_database_here")
    points = [Point("noise", {}, {"laeq": 50.0}, _now_ms())]

    async def main(client: InfluxClient) -> None:
        await client.write(encode_many(points))

    with pytest.raises(StorageAuthError):
        _run(settings, main)


def _dead_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_dead_port_is_storage_unavailable() -> None:
    settings = InfluxSettings(url=f"http://127.0.0.1:{_dead_port()}", database="x", timeout=2)
    body = encode_many([Point("noise", {}, {"laeq": 50.0}, _now_ms())])

    async def write(client: InfluxClient) -> None:
        await client.write(body)

    async def query(client: InfluxClient) -> None:
        await client.query("SHOW DATABASES")

    async def ensure(client: InfluxClient) -> None:
        await client.ensure_database()

    for action in (write, query, ensure):
        with pytest.raises(StorageUnavailableError):
            _run(settings, action)
    assert _run(settings, lambda c: c.ping()) is False


def test_bad_query_is_a_query_error(influxd: Influxd, influx_db: str) -> None:
    settings = InfluxSettings(url=influxd.url, database=influx_db)

    async def main(client: InfluxClient) -> None:
        await client.query("SELEKT nothing")

    with pytest.raises(QueryError):
        _run(settings, main)


def test_quote_ident_accepts_identifiers() -> None:
    assert quote_ident("air_quality") == '"air_quality"'
    assert quote_ident("raw") == '"raw"'
    assert quote_ident("a.b-c_9") == '"a.b-c_9"'


@pytest.mark.parametrize(
    "name",
    [
        'x"; DROP DATABASE "safecity',
        'a"b',
        "a' OR '1'='1",
        "a;b",
        "a b",
        "a\nb",
        "a\\",
        "",
        "Upper",
        "/.*/",
        "a" * 65,
        "$param",
        "тест",
    ],
)
def test_quote_ident_refuses_injection(name: str) -> None:
    with pytest.raises(QueryError):
        quote_ident(name)


def test_chunked_query_answers_the_same_series(influxd: Influxd, influx_db: str) -> None:
    """An answer streamed in chunks of a few rows is the same list of series, each whole."""
    settings = InfluxSettings(url=influxd.url, database=influx_db, retention_policy="autogen")
    base = 1_700_000_000_000
    points = [
        Point("noise", {"city": "c", "device_id": f"n-{d}"}, {"laeq": float(i + d)}, base + i)
        for d in range(3)
        for i in range(25)
    ]
    grouped = 'SELECT "laeq" FROM "noise" WHERE time >= $since GROUP BY "device_id"'
    flat = (
        'SELECT "last", "device_id" FROM '
        '(SELECT last("laeq") AS "last" FROM "noise" GROUP BY "device_id")'
    )
    since = {"since": "2023-11-14T22:13:20Z"}

    async def main(client: InfluxClient) -> list[tuple[Any, Any]]:
        await client.write(encode_many(points))
        return [
            (await client.query(q, p), await client.query(q, p, chunk_rows=rows))
            for q, p in ((grouped, since), (flat, None))
            for rows in (1, 4, 100)
        ]

    for whole, chunked in _run(settings, main):
        assert chunked == whole
    grouped_answer = _run(settings, lambda c: c.query(grouped, since, chunk_rows=4))
    assert [len(s.values) for s in grouped_answer] == [25, 25, 25]


@pytest.mark.parametrize("statement", ["SELEKT nothing", 'SELECT "x" FROM "a" WHERE $bad'])
def test_chunked_bad_query_is_a_query_error(
    influxd: Influxd, influx_db: str, statement: str
) -> None:
    settings = InfluxSettings(url=influxd.url, database=influx_db)
    with pytest.raises(QueryError):
        _run(settings, lambda c: c.query(statement, chunk_rows=10))


def test_chunked_query_on_a_dead_port_is_storage_unavailable() -> None:
    settings = InfluxSettings(url=f"http://127.0.0.1:{_dead_port()}", database="x", timeout=2)
    with pytest.raises(StorageUnavailableError):
        _run(settings, lambda c: c.query("SHOW DATABASES", chunk_rows=10))
