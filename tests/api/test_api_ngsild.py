"""The NGSI-LD API over readings and an incident stored in the session's real InfluxDB:
entities by type/id/q/attrs, geo-queries against a brute-force computation, paging,
both forms, the served @context, the temporal API and problem-details errors."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from datetime import datetime, timedelta
from typing import Any

import pytest
from api_seed import reading, write
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import ApiSettings
from safecity import incidents as inc
from safecity.influx import InfluxClient
from safecity.ngsild_models import render_context
from safecity.readings import format_ts
from safecity.registry import City

BASE = "/ngsi-ld/v1"
ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"
NOISE = 6


def laeq(i: int, minutes: int) -> float:
    """The seeded LAeq of the i-th noise device `minutes` ago."""
    return 50.0 + i * 3 + minutes / 10


@pytest.fixture(scope="module")
def seeded(api_settings: ApiSettings, city: City, module_now: datetime) -> inc.Incident:
    """Noise readings (the last ten minutes) of six devices, one weather reading, an incident."""
    points = [
        reading(
            city,
            d,
            module_now - timedelta(minutes=m),
            100 - m,
            laeq=laeq(i, m),
            lamax=80.0,
            la90=40.0,
        )
        for i, d in enumerate(city.select(kind="noise")[:NOISE])
        for m in range(10)
    ]
    weather = city.select(kind="weather")[0]
    points.append(
        reading(
            city,
            weather,
            module_now,
            1,
            temperature=21.5,
            humidity=0.4,
            pressure=930.0,
            wind_speed=3.0,
            wind_dir=270.0,
            precipitation=0.0,
            solar=300.0,
            battery=0.8,
        )
    )
    write(api_settings, points)
    cam = city.select(kind="cctv")[0]
    incident = inc.open_incident(
        city=city.id,
        district=cam.district,
        rule_id="intrusion",
        rule_type="event",
        severity="high",
        place=cam.district,
        devices=[cam.id],
        opened_at=module_now - timedelta(minutes=3),
        value=None,
        message="intrusion at gate",
        event="intrusion",
    )

    async def store() -> None:
        client = InfluxClient(api_settings.influx)
        try:
            await inc.IncidentStore(client).open(incident)
        finally:
            await client.close()

    asyncio.run(store())
    return incident


def entities(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    """GET /entities, asserting a 200."""
    r = client.get(f"{BASE}/entities", params=params)
    assert r.status_code == 200, r.text
    body: list[dict[str, Any]] = r.json()
    return body


def test_entities_by_type_normalized_with_the_context_link(
    client: TestClient,
    city: City,
    seeded: inc.Incident,
    module_now: datetime,
) -> None:
    r = client.get(f"{BASE}/entities", params={"type": "NoiseLevelObserved", "limit": 50})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    link = r.headers["link"]
    assert f"{BASE}/jsonldContexts/safecity" in link
    assert 'rel="http://www.w3.org/ns/json-ld#context"' in link
    noise = city.select(kind="noise")[:NOISE]
    by_id = {e["id"]: e for e in r.json()}
    assert sorted(by_id) == sorted(f"urn:ngsi-ld:NoiseLevelObserved:{d.id}" for d in noise)
    first = by_id[f"urn:ngsi-ld:NoiseLevelObserved:{noise[0].id}"]
    assert first["LAeq"] == {
        "type": "Property",
        "value": laeq(0, 0),
        "unitCode": "2N",
        "observedAt": format_ts(module_now),
    }
    assert first["refDevice"] == {
        "type": "Relationship",
        "object": f"urn:ngsi-ld:Device:{noise[0].id}",
    }
    assert first["location"]["value"] == {"type": "Point", "coordinates": list(noise[0].location)}
    assert "la90" not in first and "LA90" not in first


def test_key_values_form_and_attrs(client: TestClient, city: City, seeded: inc.Incident) -> None:
    weather = city.select(kind="weather")[0]
    for params in ({"options": "keyValues"}, {"format": "simplified"}):
        (entity,) = entities(
            client, type="WeatherObserved", attrs="windDirection,relativeHumidity", **params
        )
        assert entity == {
            "id": f"urn:ngsi-ld:WeatherObserved:{weather.id}",
            "type": "WeatherObserved",
            "windDirection": 270.0,
            "relativeHumidity": 0.4,
        }


def test_json_ld_accept_puts_the_context_in_the_body(
    client: TestClient, seeded: inc.Incident
) -> None:
    r = client.get(
        f"{BASE}/entities", params={"type": "Alert"}, headers={"Accept": "application/ld+json"}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/ld+json")
    (alert,) = r.json()
    assert alert["@context"].endswith(f"{BASE}/jsonldContexts/safecity")


def test_the_context_is_served_without_a_key_and_is_the_generated_one(client: TestClient) -> None:
    r = client.get(f"{BASE}/jsonldContexts/safecity", headers={"X-API-Key": ""})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/ld+json")
    assert r.text == render_context()
    assert json.loads(r.text)["@context"]["NoiseLevelObserved"]["@context"]["LAeq"] == (
        "https://smartdatamodels.org/dataModel.Environment/LAeq"
    )


def test_q_filters_equal_a_filter_over_the_values(
    client: TestClient, city: City, seeded: inc.Incident
) -> None:
    noise = city.select(kind="noise")[:NOISE]
    for op, bound, keep in ((">", 56.0, lambda v: v > 56.0), ("<=", 53.0, lambda v: v <= 53.0)):
        found = entities(client, type="NoiseLevelObserved", q=f"LAeq{op}{bound}", limit=50)
        expected = {
            f"urn:ngsi-ld:NoiseLevelObserved:{d.id}"
            for i, d in enumerate(noise)
            if keep(laeq(i, 0))
        }
        assert {e["id"] for e in found} == expected
    both = entities(
        client, type="NoiseLevelObserved", q=f'LAeq>50;areaServed=="{noise[1].district}"'
    )
    assert {e["id"] for e in both} == {
        f"urn:ngsi-ld:NoiseLevelObserved:{d.id}"
        for i, d in enumerate(noise)
        if laeq(i, 0) > 50 and d.district == noise[1].district
    }


def haversine(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Metres between two (lon, lat) points, computed here independently of the server."""
    p1, p2 = math.radians(a[1]), math.radians(b[1])
    dp, dl = p2 - p1, math.radians(b[0] - a[0])
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6_371_008.8 * math.atan2(math.sqrt(h), math.sqrt(1 - h))


def inside(ring: list[tuple[float, float]], x: float, y: float) -> bool:
    """Point in polygon by counting edge crossings of a ray to the east."""
    crossings = 0
    for (x1, y1), (x2, y2) in itertools.pairwise(ring):
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            crossings += 1
    return crossings % 2 == 1


def all_devices(client: TestClient) -> int:
    r = client.get(f"{BASE}/entities", params={"type": "Device", "limit": 0, "count": "true"})
    assert r.status_code == 200, r.text
    return int(r.headers["NGSILD-Results-Count"])


def paged(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    """Every page of a query, following Link rel=next."""
    out: list[dict[str, Any]] = []
    url: str | None = f"{BASE}/entities"
    query: dict[str, Any] | None = {**params, "limit": 50}
    while url is not None:
        r = client.get(url, params=query)
        assert r.status_code == 200, r.text
        out += r.json()
        nxt = [p for p in r.headers["link"].split(", ") if p.endswith('rel="next"')]
        url = nxt[0].split(">")[0].lstrip("<") if nxt else None
        query = None
    return out


def test_near_returns_exactly_the_devices_within_the_distance(
    client: TestClient, city: City, seeded: inc.Incident
) -> None:
    assert all_devices(client) == len(city.devices)
    centre = city.devices[0].location
    for metres in (500, 1500, 4000):
        coords = json.dumps(list(centre))
        for rel, keep in (("maxDistance", True), ("minDistance", False)):
            found = paged(
                client,
                type="Device",
                georel=f"near;{rel}=={metres}",
                geometry="Point",
                coordinates=coords,
                options="keyValues",
            )
            expected = {
                f"urn:ngsi-ld:Device:{d.id}"
                for d in city.devices
                if (haversine(centre, d.location) <= metres) == keep
            }
            assert {e["id"] for e in found} == expected, (rel, metres)
            assert 0 < len(expected) < len(city.devices) or rel == "minDistance"


def test_within_a_district_returns_exactly_its_devices_by_point_in_polygon(
    client: TestClient, city: City, seeded: inc.Incident
) -> None:
    for district in city.districts[:4]:
        ring = [tuple(p) for p in district.polygon]
        found = paged(
            client,
            type="Device",
            georel="within",
            geometry="Polygon",
            coordinates=json.dumps([[list(p) for p in ring]]),
        )
        expected = {f"urn:ngsi-ld:Device:{d.id}" for d in city.devices if inside(ring, *d.location)}
        assert expected
        assert {e["id"] for e in found} == expected, district.id


def test_no_filter_is_every_entity_of_the_city(
    client: TestClient, city: City, seeded: inc.Incident
) -> None:
    r = client.get(f"{BASE}/entities", params={"limit": 0, "count": "true"})
    assert r.json() == []
    # Every device, the seeded observations (six noise, one weather) and the alert.
    assert int(r.headers["NGSILD-Results-Count"]) == len(city.devices) + NOISE + 1 + 1


def test_paging_limit_offset_count_and_next_link(
    client: TestClient, city: City, seeded: inc.Incident
) -> None:
    whole = paged(client, type="Device")
    assert [e["id"] for e in whole] == sorted(f"urn:ngsi-ld:Device:{d.id}" for d in city.devices)
    r = client.get(
        f"{BASE}/entities", params={"type": "Device", "limit": 7, "offset": 14, "count": "true"}
    )
    assert [e["id"] for e in r.json()] == [e["id"] for e in whole[14:21]]
    assert r.headers["NGSILD-Results-Count"] == str(len(city.devices))
    assert "offset=21" in r.headers["link"] and 'rel="next"' in r.headers["link"]


def test_retrieve_device_observation_and_alert_by_id(
    client: TestClient,
    city: City,
    seeded: inc.Incident,
    module_now: datetime,
) -> None:
    weather = city.select(kind="weather")[0]
    r = client.get(
        f"{BASE}/entities/urn:ngsi-ld:Device:{weather.id}", params={"options": "keyValues"}
    )
    assert r.status_code == 200, r.text
    device = r.json()
    assert device["batteryLevel"] == 0.8
    assert device["dateLastValueReported"] == format_ts(module_now)
    assert device["areaServed"] == weather.district
    r = client.get(f"{BASE}/entities/urn:ngsi-ld:WeatherObserved:{weather.id}")
    assert r.json()["atmosphericPressure"]["unitCode"] == "A97"
    r = client.get(
        f"{BASE}/entities/urn:ngsi-ld:Alert:{seeded.id}", params={"options": "keyValues"}
    )
    assert r.status_code == 200, r.text
    alert = r.json()
    assert alert["severity"] == "high"
    assert alert["subCategory"] == "intrusion"
    assert alert["alertSource"] == f"urn:ngsi-ld:Device:{seeded.devices[0]}"
    assert alert["data"]["state"] == "open"


def test_temporal_between_before_after_and_last_n(
    client: TestClient,
    city: City,
    seeded: inc.Incident,
    module_now: datetime,
) -> None:
    device = city.select(kind="noise")[2]
    url = f"{BASE}/temporal/entities/urn:ngsi-ld:NoiseLevelObserved:{device.id}"
    r = client.get(
        url,
        params={
            "timerel": "between",
            "timeAt": format_ts(module_now - timedelta(minutes=5)),
            "endTimeAt": format_ts(module_now - timedelta(minutes=1)),
        },
    )
    assert r.status_code == 200, r.text
    instances = r.json()["LAeq"]
    assert [i["value"] for i in instances] == [laeq(2, m) for m in (5, 4, 3, 2)]
    assert [i["observedAt"] for i in instances] == [
        format_ts(module_now - timedelta(minutes=m)) for m in (5, 4, 3, 2)
    ]
    before = client.get(
        url,
        params={
            "timerel": "before",
            "timeAt": format_ts(module_now - timedelta(minutes=7)),
            "options": "temporalValues",
            "attrs": "LAeq",
        },
    ).json()
    assert before["LAeq"]["values"] == [
        [laeq(2, m), format_ts(module_now - timedelta(minutes=m))] for m in (9, 8)
    ]
    last = client.get(
        url,
        params={
            "timerel": "after",
            "timeAt": format_ts(module_now - timedelta(hours=1)),
            "lastN": 2,
        },
    ).json()
    assert [i["value"] for i in last["LAeq"]] == [laeq(2, 1), laeq(2, 0)]


def problem(r: Any, status: int, kind: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"] == kind
    assert body["status"] == status
    assert body["title"]
    return str(body["detail"])


def test_errors_are_problem_details(client: TestClient, seeded: inc.Incident) -> None:
    bad = ERRORS + "BadRequestData"
    assert "q" in problem(client.get(f"{BASE}/entities", params={"q": "LAeq~~1"}), 400, bad)
    assert "limit" in problem(
        client.get(f"{BASE}/entities", params={"type": "Device", "limit": 51}), 400, bad
    )
    assert "georel" in problem(
        client.get(
            f"{BASE}/entities",
            params={
                "type": "Device",
                "georel": "near;maxDistance==5",
                "geometry": "Polygon",
                "coordinates": "[[[0,0],[1,0],[1,1],[0,0]]]",
            },
        ),
        400,
        bad,
    )
    assert "timerel" in problem(
        client.get(f"{BASE}/temporal/entities/urn:ngsi-ld:Device:x", params={"timerel": "at"}),
        400,
        bad,
    )
    assert "coordinates" in problem(
        client.get(
            f"{BASE}/entities",
            params={"georel": "within", "geometry": "Polygon", "coordinates": "[[[0,0],[1,1]]]"},
        ),
        400,
        bad,
    )
    missing = client.get(f"{BASE}/entities/urn:ngsi-ld:Device:nowhere-001")
    assert (
        problem(missing, 404, ERRORS + "ResourceNotFound")
        == "unknown entity urn:ngsi-ld:Device:nowhere-001"
    )
    keyless = client.get(f"{BASE}/entities", params={"type": "Device"}, headers={"X-API-Key": ""})
    assert "API key" in problem(keyless, 401, "about:blank")
    # /v1 keeps its own shape.
    assert set(client.get("/v1/devices/nowhere-001").json()) == {"detail"}


def test_the_rate_limit_is_shared_with_v1_and_answers_problem_details(
    api_settings: ApiSettings, city: City, keys: dict[str, str], seeded: inc.Incident
) -> None:
    settings = api_settings.model_copy(update={"rate_limit_rps": 0.1, "rate_limit_burst": 3})
    headers = {"X-API-Key": keys["read"]}
    with TestClient(create_app(settings, city), headers=headers) as limited:
        codes = [
            limited.get("/v1/cities").status_code,
            limited.get(f"{BASE}/entities", params={"type": "Alert"}).status_code,
            limited.get("/v1/cities").status_code,
        ]
        assert codes == [200, 200, 200]
        r = limited.get(f"{BASE}/entities", params={"type": "Alert"})
        assert "rate limit" in problem(r, 429, "about:blank")
        assert 1 <= int(r.headers["Retry-After"]) <= 10
        assert limited.get("/v1/cities").status_code == 429
