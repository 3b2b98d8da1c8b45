"""The published contract: docs/openapi.json equals the app's document, operationIds read
well, and a client generated from the file by openapi-python-client works against the
running API (list cities, overview, series, events page by page, incident ack)."""

from __future__ import annotations

import asyncio
import importlib
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from api_seed import event, reading, write

from api.contract import document, render
from api.settings import ApiSettings
from control.stack import LocalStack
from safecity import incidents as inc
from safecity.influx import InfluxClient
from safecity.registry import default_city
from safecity.settings import InfluxSettings

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "openapi.json"
CITY = default_city()


def test_committed_document_equals_the_app() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == render(), (
        "docs/openapi.json is stale: run `python -m api.contract docs/openapi.json`"
    )


def test_operation_ids_are_readable_and_tags_described() -> None:
    spec = document()
    ids = [op["operationId"] for ops in spec["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    for op_id in ids:
        assert re.fullmatch(r"[a-z]+(_[a-z0-9]+)*", op_id), op_id
        assert "_v1_" not in op_id and not op_id.endswith(("_get", "_post")), op_id
    described = {t["name"]: t["description"] for t in spec["tags"]}
    used = {tag for ops in spec["paths"].values() for op in ops.values() for tag in op["tags"]}
    assert used <= set(described) and all(described[t] for t in used)


@pytest.fixture
def generated(tmp_path: Path) -> Iterator[Any]:
    """The client package generated from docs/openapi.json, importable for the test."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(
        [
            str(Path(sys.executable).parent / "openapi-python-client"),
            "generate",
            "--path",
            str(COMMITTED),
            "--meta",
            "none",
            "--output-path",
            str(tmp_path / "safecity_client"),
        ],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module("safecity_client")
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.split(".")[0] == "safecity_client"]:
            del sys.modules[name]


async def _ensure(settings: InfluxSettings) -> None:
    client = InfluxClient(settings)
    try:
        await client.ensure_database()
    finally:
        await client.close()


def _seed(stack: LocalStack, database: str) -> tuple[datetime, inc.Incident]:
    settings = ApiSettings(influx=InfluxSettings(url=stack.influx_url, database=database))
    asyncio.run(_ensure(settings.influx))
    base = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)
    noise = CITY.select(kind="noise", district="chilanzar")[0]
    cam = CITY.select(kind="cctv", district="chilanzar")[0]
    points = [
        reading(
            CITY, noise, base + timedelta(minutes=m), m + 1, laeq=50.0 + m, lamax=70.0, la90=40.0
        )
        for m in range(10)
    ]
    points += [
        event(
            CITY,
            cam,
            base + timedelta(minutes=m),
            m + 1,
            "loitering",
            "medium",
            zone="z",
            dwell_s=60.0,
        )
        for m in range(7)
    ]
    write(settings, points)
    incident = inc.open_incident(
        city=CITY.id,
        district="chilanzar",
        rule_id="loitering",
        rule_type="event",
        severity="medium",
        place="chilanzar",
        devices=[cam.id],
        opened_at=base,
        value=None,
        message="loitering in chilanzar",
        event="loitering",
    )

    async def store() -> None:
        client = InfluxClient(settings.influx)
        try:
            await inc.IncidentStore(client).open(incident)
        finally:
            await client.close()

    asyncio.run(store())
    return base, incident


def test_a_generated_client_works_against_the_running_api(
    stack: LocalStack, influx_db: str, start_api: Callable[..., Any], generated: Any
) -> None:
    base, incident = _seed(stack, influx_db)
    api = start_api(influx_db)
    from safecity_client import AuthenticatedClient
    from safecity_client.api.cities import get_city_overview, get_city_series, list_cities
    from safecity_client.api.events import list_events
    from safecity_client.api.incidents import acknowledge_incident
    from safecity_client.models import EventPage, IncidentOut, Overview, Series, TransitionIn
    from safecity_client.models.get_city_series_field import GetCitySeriesField
    from safecity_client.models.get_city_series_kind import GetCitySeriesKind

    client = AuthenticatedClient(
        base_url=api.url, token=api.api_key, prefix="", auth_header_name="X-API-Key"
    )
    cities = list_cities.sync(client=client)
    assert [c.id for c in cities.items] == [CITY.id]

    overview = get_city_overview.sync(CITY.id, client=client)
    assert isinstance(overview, Overview) and overview.city == CITY.id

    window = {"from_": base, "to": base + timedelta(minutes=10)}
    series = get_city_series.sync(
        CITY.id,
        client=client,
        kind=GetCitySeriesKind.NOISE,
        field=GetCitySeriesField.LAEQ,
        every="1m",
        **window,
    )
    assert isinstance(series, Series)
    assert [p.value for p in series.points] == [50.0 + m for m in range(10)]

    seqs: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = list_events.sync(client=client, limit=3, cursor=cursor, **window)
        assert isinstance(page, EventPage)
        seqs += [e.seq for e in page.items]
        pages += 1
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert seqs == [7, 6, 5, 4, 3, 2, 1] and pages == 3

    acked = acknowledge_incident.sync(incident.id, client=client, body=TransitionIn(note="on it"))
    assert isinstance(acked, IncidentOut)
    assert acked.state.value == "acknowledged" and acked.transitions[-1].note == "on it"
