"""Exports: CSV and NDJSON of a series and of events, read back and compared to the JSON API;
the row bound; `safecity export` against the API as a real process."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from api_seed import event, reading, write
from fastapi.testclient import TestClient

from api.app import create_app
from api.export import add_arguments, export
from api.settings import ApiSettings
from control.stack import LocalStack
from safecity.influx import InfluxClient
from safecity.readings import format_ts
from safecity.registry import City, default_city
from safecity.settings import InfluxSettings

Window = dict[str, str]


def _base() -> datetime:
    """Two hours before now, on a 10-minute boundary: where the seeded half hour begins."""
    at = datetime.now(UTC) - timedelta(hours=2)
    return at.replace(minute=at.minute // 10 * 10, second=0, microsecond=0)


def _window(base: datetime) -> Window:
    """The seeded half hour as `from`/`to` parameters."""
    return {"from": format_ts(base), "to": format_ts(base + timedelta(minutes=30))}


def _points(city: City, base: datetime) -> list[Any]:
    noise = city.select(kind="noise", district="chilanzar")
    cam = city.select(kind="cctv", district="chilanzar")[0]
    points = [
        reading(
            city,
            d,
            base + timedelta(minutes=m, seconds=i),
            m,
            laeq=40.0 + m + i / 3,
            lamax=80.0,
            la90=30.0,
        )
        for m in range(30)
        for i, d in enumerate(noise[:2])
    ]
    points += [
        event(
            city,
            cam,
            base + timedelta(minutes=m),
            m,
            "intrusion",
            "high",
            zone="gate, north",
            object_class="person",
            confidence=0.5 + m / 100,
        )
        for m in range(12)
    ]
    return points


@pytest.fixture(scope="module")
def seeded(api_settings: ApiSettings, city: City) -> Window:
    """The seeded half hour (placed when the module's first test begins)."""
    base = _base()
    write(api_settings, _points(city, base))
    return _window(base)


def test_series_csv_and_ndjson_match_the_json_series(client: TestClient, seeded: Window) -> None:
    params = {**seeded, "kind": "noise", "field": "laeq", "district": "chilanzar", "every": "5m"}
    json_points = client.get("/v1/cities/tashkent/series", params=params).json()["points"]
    assert len(json_points) == 6
    r = client.get("/v1/cities/tashkent/export/series", params=params)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    disposition = r.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="tashkent-chilanzar-noise-laeq-mean-')
    assert disposition.endswith('.csv"')
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [(row["ts"], float(row["value"]), row["unit"]) for row in rows] == [
        (p["ts"], p["value"], "dB(A)") for p in json_points
    ]
    r = client.get("/v1/cities/tashkent/export/series", params={**params, "format": "ndjson"})
    assert r.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert [(x["ts"], x["value"]) for x in lines] == [(p["ts"], p["value"]) for p in json_points]


def _all_events(client: TestClient, params: dict[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        extra = {"cursor": cursor} if cursor else {}
        body = client.get("/v1/events", params={**params, "limit": 5, **extra}).json()
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items


def test_events_csv_matches_the_json_events(client: TestClient, seeded: Window) -> None:
    params = {**seeded, "district": "chilanzar"}
    expected = _all_events(client, params)
    assert len(expected) == 12
    r = client.get("/v1/cities/tashkent/export/events", params=params)
    assert r.status_code == 200
    assert r.headers["content-disposition"].endswith('.csv"')
    assert 'filename="tashkent-chilanzar-events-' in r.headers["content-disposition"]
    whole = client.get("/v1/cities/tashkent/export/events", params=seeded)
    # The whole city: named once, not `tashkent-tashkent-`.
    assert 'filename="tashkent-events-' in whole.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    got = [{**row, "seq": int(row["seq"]), "details": json.loads(row["details"])} for row in rows]
    assert got == expected  # the comma inside a detail survives the CSV quoting
    ndjson = client.get("/v1/cities/tashkent/export/events", params={**params, "format": "ndjson"})
    assert [json.loads(line) for line in ndjson.text.splitlines()] == expected


def test_exports_are_bounded_and_check_their_input(
    api_settings: ApiSettings, city: City, keys: dict[str, str], seeded: Window
) -> None:
    small = api_settings.model_copy(update={"max_export_rows": 5})
    with TestClient(create_app(small, city), headers={"X-API-Key": keys["read"]}) as c:
        r = c.get("/v1/cities/tashkent/export/events", params=seeded)
        assert r.status_code == 422
        assert "holds 12 events; at most 5 (max_export_rows)" in r.json()["detail"]
        assert (
            c.get(
                "/v1/cities/tashkent/export/events", params={**seeded, "district": "nowhere"}
            ).status_code
            == 404
        )
        r = c.get("/v1/cities/tashkent/export/series", params={"kind": "noise", "field": "nope"})
        assert r.status_code == 422 and "field" in r.json()["detail"]
        assert c.get("/v1/cities/atlantis/export/events").status_code == 404
        assert (
            c.get("/v1/cities/tashkent/export/events", headers={"X-API-Key": ""}).status_code == 401
        )


async def _ensure(settings: InfluxSettings) -> None:
    client = InfluxClient(settings)
    try:
        await client.ensure_database()
    finally:
        await client.close()


def test_safecity_export_writes_the_file(
    stack: LocalStack,
    influx_db: str,
    start_api: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = ApiSettings(influx=InfluxSettings(url=stack.influx_url, database=influx_db))
    asyncio.run(_ensure(settings.influx))
    base = _base()
    write(settings, _points(default_city(), base))
    window = _window(base)
    api = start_api(influx_db)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    monkeypatch.chdir(tmp_path)
    args = parser.parse_args(
        [
            "series",
            "--url",
            api.url,
            "--key",
            api.api_key,
            "--city",
            "tashkent",
            "--district",
            "chilanzar",
            "--kind",
            "noise",
            "--field",
            "laeq",
            "--every",
            "10m",
            "--from",
            window["from"],
            "--to",
            window["to"],
        ]
    )
    path = export(args)
    assert path.parent == Path(".") and path.name.startswith("tashkent-chilanzar-noise-laeq")
    rows = list(csv.DictReader((tmp_path / path).open()))
    assert len(rows) == 3 and all(row["unit"] == "dB(A)" for row in rows)
    bad = parser.parse_args(["events", "--url", api.url, "--key", "nope", "--city", "tashkent"])
    with pytest.raises(Exception, match="401"):
        export(bad)
