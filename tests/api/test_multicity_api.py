"""One API serving two cities, each from its own InfluxDB database; keys scoped to cities.

Tashkent and Samarkand (the built-in registries) are served by one app whose settings
name the database `<prefix>` and so give each city `<prefix>_<city>`. Readings and
incidents are written into each city's own database through the schema, as ingest and
the alerts service write them; the session's real influxd stores them.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_seed import ago
from fastapi.testclient import TestClient

from api.apikeys import KeyStore
from api.app import create_app
from api.settings import ApiSettings
from control import cli
from control.stack import Influxd
from safecity import incidents as inc
from safecity.citygen import builtin_cities
from safecity.influx import InfluxClient
from safecity.lineprotocol import encode_many
from safecity.readings import Reading, format_ts, parse
from safecity.registry import Cities, City, Device
from safecity.schema import reading_point
from safecity.settings import InfluxSettings

# One noise level per city, far apart: a figure read from the wrong database shows.
LAEQ = {"tashkent": 61.0, "samarkand": 74.0}


@pytest.fixture(scope="module")
def cities() -> Cities:
    """Tashkent and Samarkand, Tashkent first (the home city)."""
    return builtin_cities(["tashkent", "samarkand"])


@pytest.fixture(scope="module")
def settings(influxd: Influxd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiSettings]:
    """API settings whose database name is a prefix: several cities, one database each."""
    home = tmp_path_factory.mktemp("multicity")
    made = ApiSettings(
        influx=InfluxSettings(url=influxd.url, database=f"api_mc_{secrets.token_hex(4)}"),
        api_keys_file=home / "apikeys.json",
        audit_log_file=home / "audit" / "api-audit.jsonl",
        deadletter_dir=home / "deadletter",
        rate_limit_rps=10_000,
        rate_limit_burst=10_000,
        overview_cache_ttl=0,
    )
    yield made
    for city in ("tashkent", "samarkand"):
        with contextlib.suppress(httpx.HTTPError):
            db = made.influx.database_for(city, ["tashkent", "samarkand"])
            httpx.post(f"{influxd.url}/query", data={"q": f'DROP DATABASE "{db}"'}, timeout=5)


def noise_reading(ts: datetime, seq: int, laeq: float) -> Reading:
    """A valid noise reading of level `laeq`."""
    payload = (
        f'{{"ts": "{format_ts(ts)}", "seq": {seq}, '
        f'"values": {{"laeq": {laeq}, "lamax": {laeq + 8}, "la90": 50.0}}}}'
    ).encode()
    reading = parse("noise", payload, past_window=None, future_window=None)
    assert isinstance(reading, Reading), reading
    return reading


def noise_device(city: City) -> Device:
    """The city's first noise sensor."""
    return city.select(kind="noise")[0]


def incident_of(city: City, opened_at: datetime) -> inc.Incident:
    """An open incident of the city, at its first noise sensor."""
    device = noise_device(city)
    return inc.open_incident(
        city=city.id,
        district=device.district,
        rule_id="panic",
        rule_type="event",
        severity="critical",
        place=device.district,
        devices=[device.id],
        opened_at=opened_at,
        value=1.0,
        message=f"panic in {city.id}",
        event="panic",
    )


@pytest.fixture(scope="module")
def incidents(cities: Cities, module_now: datetime) -> dict[str, inc.Incident]:
    """One open incident per city, opened five minutes before the module's first test."""
    opened = module_now - timedelta(minutes=5)
    return {city.id: incident_of(city, opened) for city in cities.values()}


@pytest.fixture(scope="module")
def seeded(
    settings: ApiSettings,
    cities: Cities,
    incidents: dict[str, inc.Incident],
    module_now: datetime,
) -> dict[str, str]:
    """Each city's database created and filled with its own readings and incident only."""

    async def seed() -> dict[str, str]:
        base = InfluxClient(settings.influx)
        databases = {}
        try:
            for city in cities.values():
                client = base.for_city(city.id, cities.ids)
                databases[city.id] = client.settings.database
                await client.ensure_database()
                device = noise_device(city)
                level = LAEQ[city.id]
                readings = [
                    (device, noise_reading(module_now - timedelta(minutes=m), m, level))
                    for m in (1, 2, 3)
                ]
                body = encode_many(reading_point(city.id, d, r) for d, r in readings)
                await client.write(body)
                await inc.IncidentStore(client).open(incidents[city.id])
        finally:
            await base.close()
        return databases

    return asyncio.run(seed())


@pytest.fixture(scope="module")
def store(settings: ApiSettings) -> KeyStore:
    """The module's key store."""
    return KeyStore(settings.api_keys_file)


@pytest.fixture(scope="module")
def keys(store: KeyStore) -> dict[str, str]:
    """Keys: every city (read, admin), Tashkent only (read, admin), Samarkand only (operate)."""
    return {
        "all": store.create("all-cities", ("read",))[1],
        "all_admin": store.create("all-admin", ("admin",))[1],
        "tashkent": store.create("tashkent-reader", ("read",), ("tashkent",))[1],
        "tashkent_admin": store.create("tashkent-admin", ("admin",), ("tashkent",))[1],
        "samarkand_operator": store.create("samarkand-op", ("operate",), ("samarkand",))[1],
    }


@pytest.fixture(scope="module")
def client(
    settings: ApiSettings, cities: Cities, seeded: dict[str, str], keys: dict[str, str]
) -> Iterator[TestClient]:
    """The app serving both cities."""
    with TestClient(create_app(settings, cities=cities), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def tashkent_only(
    settings: ApiSettings, cities: Cities, seeded: dict[str, str], keys: dict[str, str]
) -> Iterator[TestClient]:
    """An app of the same deployment that serves Tashkent alone (its database included):
    what a city that does not exist looks like to the same key."""
    alone = settings.model_copy(
        update={
            "influx": settings.influx.model_copy(
                update={"database": settings.influx.database_for("tashkent", cities.ids)}
            )
        }
    )
    app = create_app(alone, city=cities["tashkent"])
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def as_key(key: str) -> dict[str, str]:
    """The header of a key."""
    return {"X-API-Key": key}


def laeq(body: dict[str, Any]) -> float:
    """The overview's noise level."""
    value = body["noise"]["laeq"]["value"]
    assert isinstance(value, float)
    return value


def test_each_city_is_served_from_its_own_database(
    client: TestClient,
    cities: Cities,
    seeded: dict[str, str],
    keys: dict[str, str],
    module_now: datetime,
) -> None:
    headers = as_key(keys["all"])
    assert seeded == {
        "tashkent": f"{seeded['tashkent'].removesuffix('_tashkent')}_tashkent",
        "samarkand": f"{seeded['tashkent'].removesuffix('_tashkent')}_samarkand",
    }
    listed = client.get("/v1/cities", headers=headers)
    assert listed.status_code == 200
    assert [c["id"] for c in listed.json()["items"]] == ["tashkent", "samarkand"]
    assert listed.json()["items"][1]["devices"] == len(cities["samarkand"].devices)
    for city_id, level in LAEQ.items():
        overview = client.get(f"/v1/cities/{city_id}/overview", headers=headers)
        assert overview.status_code == 200, overview.text
        assert overview.json()["city"] == city_id
        assert laeq(overview.json()) == pytest.approx(level, abs=0.05)
        device = noise_device(cities[city_id])
        series = client.get(
            f"/v1/cities/{city_id}/series",
            params={"kind": "noise", "field": "laeq", "from": (module_now - timedelta(minutes=30))},
            headers=headers,
        )
        values = [p["value"] for p in series.json()["points"] if p["value"] is not None]
        assert values and all(v == pytest.approx(level) for v in values), series.text
        # A device is found in its own city, whichever city the request names none of.
        latest = client.get(f"/v1/devices/{device.id}/latest", headers=headers)
        assert latest.status_code == 200, latest.text
        assert latest.json()["values"]["laeq"] == level
        devices = client.get("/v1/devices", params={"city": city_id}, headers=headers).json()
        assert {d["city"] for d in devices["items"]} == {city_id}
        listed_incidents = client.get("/v1/incidents", params={"city": city_id}, headers=headers)
        assert [i["city"] for i in listed_incidents.json()["items"]] == [city_id]
    # Without a city, the routes that take one mean the home city (as a single city did).
    assert {d["city"] for d in client.get("/v1/devices", headers=headers).json()["items"]} == {
        "tashkent"
    }


def test_the_databases_hold_only_their_own_city(influxd: Influxd, seeded: dict[str, str]) -> None:
    for city_id, database in seeded.items():
        shown = httpx.post(
            f"{influxd.url}/query",
            data={"q": 'SHOW TAG VALUES FROM "noise" WITH KEY = "city"', "db": database},
            timeout=10,
        ).json()
        values = {v[1] for v in shown["results"][0]["series"][0]["values"]}
        assert values == {city_id}


def _same_answer(a: httpx.Response, b: httpx.Response) -> None:
    assert (a.status_code, a.json()) == (b.status_code, b.json())
    assert a.status_code == 404
    skip = {"date", "content-length"}
    assert {k: v for k, v in a.headers.items() if k not in skip} == {
        k: v for k, v in b.headers.items() if k not in skip
    }


def test_a_key_of_one_city_finds_the_other_exactly_as_a_city_that_does_not_exist(
    client: TestClient,
    tashkent_only: TestClient,
    cities: Cities,
    incidents: dict[str, inc.Incident],
    keys: dict[str, str],
) -> None:
    headers = as_key(keys["tashkent"])
    listed = client.get("/v1/cities", headers=headers).json()
    assert [c["id"] for c in listed["items"]] == ["tashkent"]
    assert client.get("/v1/me", headers=headers).json()["cities"] == ["tashkent"]
    device = noise_device(cities["samarkand"])
    probes: list[tuple[str, dict[str, str]]] = [
        ("/v1/cities/samarkand", {}),
        ("/v1/cities/samarkand/overview", {}),
        ("/v1/cities/samarkand/districts", {}),
        (f"/v1/cities/samarkand/districts/{device.district}/overview", {}),
        ("/v1/cities/samarkand/series", {"kind": "noise", "field": "laeq"}),
        ("/v1/cities/samarkand/export/series", {"kind": "noise", "field": "laeq"}),
        ("/v1/cities/samarkand/export/events", {}),
        ("/v1/devices", {"city": "samarkand"}),
        ("/v1/events", {"city": "samarkand"}),
        ("/v1/incidents", {"city": "samarkand"}),
        ("/v1/incidents/figures", {"city": "samarkand"}),
        ("/v1/stream", {"city": "samarkand"}),
        (f"/v1/devices/{device.id}", {}),
        (f"/v1/devices/{device.id}/latest", {}),
        (f"/v1/devices/{device.id}/history", {"field": "laeq"}),
        (f"/v1/incidents/{incidents['samarkand'].id}", {}),
    ]
    for path, params in probes:
        scoped = client.get(path, params=params, headers=headers)
        absent = tashkent_only.get(path, params=params, headers=headers)
        _same_answer(scoped, absent)
    assert client.get("/v1/cities/samarkand", headers=headers).json() == {
        "detail": "unknown city samarkand (this API serves tashkent)"
    }
    # The same key still reads its own city.
    assert client.get("/v1/cities/tashkent/overview", headers=headers).status_code == 200
    assert client.get(f"/v1/incidents/{incidents['tashkent'].id}", headers=headers).status_code == (
        200
    )


def test_audit_entries_name_the_city_and_a_city_admin_sees_only_its_own(
    client: TestClient, incidents: dict[str, inc.Incident], keys: dict[str, str]
) -> None:
    operator = as_key(keys["samarkand_operator"])
    samarkand = incidents["samarkand"].id
    # Another city's incident is unknown to the operator: 404, nothing changes.
    refused = client.post(f"/v1/incidents/{incidents['tashkent'].id}/ack", headers=operator)
    assert refused.status_code == 404
    assert refused.json() == {"detail": f"unknown incident {incidents['tashkent'].id}"}
    done = client.post(f"/v1/incidents/{samarkand}/ack", headers=operator, json={"note": "seen"})
    assert done.status_code == 200, done.text
    assert done.json()["state"] == "acknowledged" and done.json()["city"] == "samarkand"
    # The step went to Samarkand's database: the all-cities key reads it there.
    stored = client.get(f"/v1/incidents/{samarkand}", headers=as_key(keys["all"])).json()
    assert stored["state"] == "acknowledged"

    everything = client.get("/v1/audit", headers=as_key(keys["all_admin"])).json()["items"]
    ack = next(r for r in everything if r["route"].endswith("/ack") and r["status"] == 200)
    assert ack["city"] == "samarkand" and ack["target"] == samarkand
    missed = next(r for r in everything if r["route"].endswith("/ack") and r["status"] == 404)
    assert missed["city"] is None  # the operator never reached a city it may not see
    # A Tashkent admin's audited call (delivery needs `operate`) is about Tashkent.
    tashkent_device = incidents["tashkent"].devices[0]
    admin = as_key(keys["tashkent_admin"])
    assert client.get(f"/v1/devices/{tashkent_device}/delivery", headers=admin).status_code == 200
    own = client.get("/v1/audit", headers=admin).json()["items"]
    assert [r["city"] for r in own] == ["tashkent"]
    assert own[0]["route"] == "/v1/devices/{device_id}/delivery"
    # Listing the audit log is about no city: only an all-city admin sees those records.
    later = client.get("/v1/audit", headers=as_key(keys["all_admin"])).json()["items"]
    assert any(r["route"] == "/v1/audit" and r["city"] is None for r in later)


def test_apikey_create_takes_cities(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SAFECITY_REGISTRY", raising=False)
    keys_file = tmp_path / "keys.json"
    args = ["apikey", "create", "--name", "region", "--scopes", "read", "--keys-file"]
    assert cli.main([*args, str(keys_file), "--city", "tashkent", "--city", "samarkand"]) == 0
    # This deployment (the built-in Tashkent) does not serve Samarkand: it is said.
    assert "note: samarkand not served here (this deployment: tashkent)" in capsys.readouterr().err
    assert cli.main([*args, str(keys_file)]) == 0
    store = KeyStore(keys_file)
    store.load()
    scoped, everywhere = store.records()
    assert scoped.cities == ("tashkent", "samarkand") and scoped.sees("samarkand")
    assert not scoped.sees("almaty")
    assert everywhere.cities == () and everywhere.sees("almaty")
    # A malformed city id is refused with its reason; no key is made.
    assert cli.main([*args, str(keys_file), "--city", "Not A City"]) == 2
    store.load()
    assert len(store.records()) == 2


def _grafana_alert(city: str, district: str) -> dict[str, Any]:
    started = ago(2).isoformat().replace("+00:00", "Z")
    alert = {
        "status": "firing",
        "labels": {"alertname": "WHO PM2.5", "severity": "warning", "city": city},
        "annotations": {"summary": f"PM2.5 high in {city}/{district}"},
        "startsAt": started,
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": f"{city}0123456789",
        "values": {"B": 31.0},
    }
    alert["labels"]["district"] = district
    return {"receiver": "safecity-incidents", "status": "firing", "alerts": [alert]}


def test_grafana_alerts_go_to_their_citys_database_and_only_the_keys_cities(
    client: TestClient, cities: Cities, store: KeyStore, keys: dict[str, str]
) -> None:
    _, operator = store.create("samarkand-grafana", ("operate",), ("samarkand",))
    bearer = {"Authorization": f"Bearer {operator}"}
    district = cities["samarkand"].districts[0].id
    opened = client.post(
        "/v1/alerts/grafana", json=_grafana_alert("samarkand", district), headers=bearer
    )
    assert opened.status_code == 200, opened.text
    (ident,) = opened.json()["opened"]
    # Another city's alert is not this key's to file.
    other = client.post(
        "/v1/alerts/grafana", json=_grafana_alert("tashkent", "chilanzar"), headers=bearer
    )
    assert other.json() == {"opened": [], "resolved": [], "ignored": 1}
    everyone = as_key(keys["all"])
    found = client.get(f"/v1/incidents/{ident}", headers=everyone).json()
    assert found["city"] == "samarkand" and found["district"] == district
    listed = client.get("/v1/incidents", params={"city": "tashkent"}, headers=everyone).json()
    assert ident not in [i["id"] for i in listed["items"]]
    audit = client.get("/v1/audit", headers=as_key(keys["all_admin"])).json()["items"]
    filed = [r for r in audit if r["route"] == "/v1/alerts/grafana"]
    assert [r["city"] for r in filed] == [None, "samarkand"]  # newest first


def test_ngsild_a_key_of_one_city_finds_the_other_exactly_as_a_city_that_does_not_exist(
    client: TestClient,
    tashkent_only: TestClient,
    cities: Cities,
    incidents: dict[str, inc.Incident],
    keys: dict[str, str],
) -> None:
    headers = as_key(keys["tashkent"])
    device = noise_device(cities["samarkand"])
    alert = f"urn:ngsi-ld:Alert:{incidents['samarkand'].id}"
    probes: list[tuple[str, dict[str, str]]] = [
        ("/ngsi-ld/v1/entities", {"type": "NoiseLevelObserved", "city": "samarkand"}),
        (f"/ngsi-ld/v1/entities/urn:ngsi-ld:Device:{device.id}", {}),
        (f"/ngsi-ld/v1/entities/urn:ngsi-ld:NoiseLevelObserved:{device.id}", {}),
        (f"/ngsi-ld/v1/entities/{alert}", {}),
        (f"/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:NoiseLevelObserved:{device.id}", {}),
    ]
    for path, params in probes:
        scoped = client.get(path, params=params, headers=headers)
        absent = tashkent_only.get(path, params=params, headers=headers)
        _same_answer(scoped, absent)
        assert scoped.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/ResourceNotFound"
    # The unknown city's reason is /v1's, in a problem-details body.
    unknown = client.get("/ngsi-ld/v1/entities", params=probes[0][1], headers=headers).json()
    v1 = client.get("/v1/devices", params={"city": "samarkand"}, headers=headers).json()
    assert unknown["detail"] == v1["detail"]
    # Its own city's entities, and the other city's for a key of both.
    own = noise_device(cities["tashkent"])
    mine = client.get(
        "/ngsi-ld/v1/entities", params={"type": "NoiseLevelObserved"}, headers=headers
    )
    assert [e["id"] for e in mine.json()] == [f"urn:ngsi-ld:NoiseLevelObserved:{own.id}"]
    both = as_key(keys["all"])
    for path, _ in probes[1:]:
        assert client.get(path, headers=both).status_code == 200, path
    theirs = client.get("/ngsi-ld/v1/entities", params=probes[0][1], headers=both).json()
    assert [e["LAeq"]["value"] for e in theirs] == [LAEQ["samarkand"]]
