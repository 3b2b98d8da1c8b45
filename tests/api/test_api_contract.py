"""The published contract: docs/openapi.json equals the app's document, operationIds read
well, and a client generated from the file by openapi-python-client works against the
running API: the main calls in detail (list cities, overview, series, events page by
page, incident ack), and every operation it generated called once."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from api_seed import event, reading, write

from api.apikeys import KeyStore
from api.contract import document, render
from api.settings import ApiSettings
from control.stack import LocalStack
from safecity import acklinks
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


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The client package generated from docs/openapi.json, importable for the tests."""
    tmp_path = tmp_path_factory.mktemp("client")
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


def _seed(stack: LocalStack, database: str) -> tuple[datetime, list[inc.Incident]]:
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
    incidents = [
        inc.open_incident(
            city=CITY.id,
            district="chilanzar",
            rule_id=rule,
            rule_type="event",
            severity="medium",
            place="chilanzar",
            devices=[cam.id],
            opened_at=base,
            value=None,
            message=f"{rule} in chilanzar",
            event=rule,
        )
        for rule in ("loitering", "intrusion")
    ]

    async def store() -> None:
        client = InfluxClient(settings.influx)
        try:
            for incident in incidents:
                await inc.IncidentStore(client).open(incident)
        finally:
            await client.close()

    asyncio.run(store())
    return base, incidents


def test_a_generated_client_works_against_the_running_api(
    stack: LocalStack, influx_db: str, start_api: Callable[..., Any], generated: Any
) -> None:
    base, (incident, _) = _seed(stack, influx_db)
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


def _expected(spec: dict[str, Any]) -> dict[str, tuple[set[int], str | None]]:
    """Each operation's documented success statuses and schema name (None: an inline
    schema or a text body such as CSV, HTML or SSE)."""
    out: dict[str, tuple[set[int], str | None]] = {}
    for ops in spec["paths"].values():
        for op in ops.values():
            success = {k: v for k, v in op["responses"].items() if k.startswith("2")}
            content = success[min(success)].get("content", {})
            json_body = next((v for k, v in content.items() if k.endswith("json")), {})
            ref = json_body.get("schema", {}).get("$ref")
            out[op["operationId"]] = ({int(k) for k in success}, ref and ref.rsplit("/", 1)[-1])
    return out


def _operations(package: Any) -> dict[str, Any]:
    """operationId -> the generated module (`<package>.api.<tag>.<operationId>`)."""
    spec = document()
    found = {}
    for ops in spec["paths"].values():
        for op in ops.values():
            tag = re.sub(r"\W", "_", op["tags"][0]).lower()
            name = f"{package.__name__}.api.{tag}.{op['operationId']}"
            found[op["operationId"]] = importlib.import_module(name)
    return found


def _calls(
    base: datetime, incident_id: str, ack_token: str, models: Any
) -> dict[str, dict[str, Any]]:
    """The arguments of one call of every operation, against the seeded data (`ack_token`
    acknowledges another incident than `incident_id`, which the transitions go through)."""
    noise = CITY.select(kind="noise", district="chilanzar")[0]
    window = {"from_": base, "to": base + timedelta(minutes=10)}
    alert = models.GrafanaAlert(
        status=models.GrafanaAlertStatus.FIRING,
        starts_at=base,
        labels=models.GrafanaAlertLabels.from_dict({"alertname": "client-test"}),
    )
    note = {"body": models.TransitionIn(note="generated client")}
    return {
        "healthz": {},
        "readyz": {},
        "list_cities": {},
        "get_city": {"city_id": CITY.id},
        "get_city_overview": {"city_id": CITY.id},
        "get_district_overview": {"city_id": CITY.id, "district_id": "chilanzar"},
        "list_districts": {"city_id": CITY.id},
        "get_city_series": {
            "city_id": CITY.id,
            "kind": models.GetCitySeriesKind.NOISE,
            "field": models.GetCitySeriesField.LAEQ,
            **window,
        },
        "list_devices": {"limit": 5},
        "get_device": {"device_id": noise.id},
        "get_device_latest": {"device_id": noise.id},
        "get_device_history": {
            "device_id": noise.id,
            "field": models.GetDeviceHistoryField.LAEQ,
            **window,
        },
        "list_events": {"limit": 3, **window},
        "get_device_delivery": {"device_id": noise.id},
        "export_series": {
            "city_id": CITY.id,
            "kind": models.ExportSeriesKind.NOISE,
            "field": models.ExportSeriesField.LAEQ,
            **window,
        },
        "export_events": {"city_id": CITY.id, **window},
        "list_incidents": {},
        "get_incident_figures": {},
        "get_incident": {"incident_id": incident_id},
        "acknowledge_incident": {"incident_id": incident_id, **note},
        "dispatch_incident": {"incident_id": incident_id, **note},
        "resolve_incident": {"incident_id": incident_id, **note},
        "grafana_alerts": {"body": models.GrafanaNotification(status="firing", alerts=[alert])},
        "get_current_key": {},
        "list_audit_records": {"limit": 5},
        "stream_live": {},
        "get_region_overview": {},
        "list_notifications": {"limit": 5},
        "incident_notifications": {"incident_id": incident_id},
        "ack_page": {"token": ack_token},
        "ack_link": {"token": ack_token},
        **_more_calls(noise, window, models),
    }


def _more_calls(device: Any, window: dict[str, Any], models: Any) -> dict[str, dict[str, Any]]:
    """The standard (NGSI-LD) and command operations."""
    entity = f"urn:ngsi-ld:NoiseLevelObserved:{device.id}"
    return {
        "get_context": {},
        "query_entities": {"type_": "NoiseLevelObserved", "limit": 5},
        "retrieve_entity": {"entity_id": entity},
        "retrieve_temporal_entity": {
            "entity_id": entity,
            "timerel": models.RetrieveTemporalEntityTimerelType0.BETWEEN,
            "time_at": window["from_"],
            "end_time_at": window["to"],
        },
        "send_device_command": {
            "device_id": device.id,
            "body": models.RebootCommand(name="reboot", expires_in=60.0),
        },
        "send_district_command": {
            "city_id": CITY.id,
            "district_id": "chilanzar",
            "body": models.SetLevelGroup.from_dict(
                {"kind": "streetlight", "name": "set_level", "params": {"level": 40}}
            ),
        },
        "list_commands": {"limit": 5},
        "air_quality_report": {"city_id": CITY.id},
        "console_session": {},
        "sign_out": {},
    }


def test_the_generated_client_keeps_every_operation_and_each_works(
    stack: LocalStack,
    influx_db: str,
    start_api: Callable[..., Any],
    generated: Any,
    tmp_path: Path,
) -> None:
    spec = document()
    titles = [s.get("title", n) for n, s in spec["components"]["schemas"].items()]
    assert len(titles) == len(set(titles)), "schema titles must be unique (the client's names)"
    base, incidents = _seed(stack, influx_db)
    keys_file, ack_key = tmp_path / "keys.json", tmp_path / "ack.key"
    _, admin = KeyStore(keys_file).create("client-test", ("admin",))
    key = acklinks.ensure_key(ack_key)
    claim = acklinks.new_claim(incidents[1].id, CITY.id, "ann", "hook", time.time() + 600)
    api = start_api(
        influx_db,
        SAFECITY_API_KEYS_FILE=str(keys_file),
        SAFECITY_ACK_KEY_FILE=str(ack_key),
        SAFECITY_ACK_SPENT_FILE=str(tmp_path / "ack-spent.db"),
        SAFECITY_NOTIFY_DIR=str(tmp_path / "notify"),
        SAFECITY_COMMANDS__PASSWORD=stack.secret("_command"),
        SAFECITY_COMMANDS_FILE=str(tmp_path / "commands.sqlite3"),
    )
    token = acklinks.sign(key, claim)
    models = importlib.import_module("safecity_client.models")
    client = generated.AuthenticatedClient(
        base_url=api.url, token=admin, prefix="", auth_header_name="X-API-Key", timeout=30.0
    )
    webhook = generated.AuthenticatedClient(base_url=api.url, token=admin, timeout=30.0)
    modules = _operations(generated)
    expected = _expected(spec)
    calls = _calls(base, incidents[0].id, token, models)
    assert set(modules) == set(expected) == {*calls, "get_command"}
    for op_id, kwargs in calls.items():
        parsed = _call(op_id, modules[op_id], expected[op_id], models, client, webhook, kwargs)
        if op_id == "send_device_command":
            command = {"command_id": parsed.id}
            _call("get_command", modules["get_command"], expected["get_command"], models,
                  client, webhook, command)  # fmt: skip


def _call(
    op_id: str,
    module: Any,
    expected: tuple[set[int], str | None],
    models: Any,
    client: Any,
    webhook: Any,
    kwargs: dict[str, Any],
) -> Any:
    """One operation called through the generated client: its documented success status,
    its body parsed into the generated type; returns what the client parsed."""
    statuses, schema = expected
    if schema is not None:
        # Every success schema survived generation, and the function is typed with it.
        returns = str(inspect.signature(module.sync).return_annotation)
        assert schema in returns, f"{op_id} returns {returns}"
    if op_id == "stream_live":
        _first_event_bytes(client, module, kwargs)
        return None
    caller = webhook if op_id in ("grafana_alerts", "ack_page", "ack_link") else client
    response = module.sync_detailed(client=caller, **kwargs)
    assert response.status_code in statuses, f"{op_id}: {response.status_code} {response.content!r}"
    parsed = response.parsed
    if schema is not None:
        wanted = getattr(models, schema)
        assert isinstance(parsed, wanted), f"{op_id}: {type(parsed).__name__}, not {wanted}"
    else:
        assert response.content, f"{op_id}: an empty body"
    return parsed


def _first_event_bytes(client: Any, module: Any, kwargs: dict[str, Any]) -> None:
    """The stream never ends: its request as the client builds it, up to the first bytes."""
    request = module._get_kwargs(**kwargs)
    with client.get_httpx_client().stream(**request) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert next(response.iter_text())
