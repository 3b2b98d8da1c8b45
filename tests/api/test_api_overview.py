"""City and district overview, districts GeoJSON and device status, against a real InfluxDB."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from api_seed import ago, event, reading, status, write
from fastapi.testclient import TestClient

from api import aqi
from api.app import create_app
from api.settings import ApiSettings
from safecity import incidents as inc
from safecity.influx import InfluxClient
from safecity.registry import City

D = "yashnobod"  # has 2+ devices of every kind the overview aggregates
OTHER = "chilanzar"


def _pick(city: City, kind: str, n: int, district: str = D) -> list[Any]:
    devices = city.select(kind=kind, district=district)
    assert len(devices) >= n
    return devices[:n]


@pytest.fixture(scope="module")
def scenario(api_settings: ApiSettings, city: City) -> dict[str, Any]:
    """Known readings in district D (and a little elsewhere) in the last few minutes."""
    air = _pick(city, "air_quality", 2)
    traffic = _pick(city, "traffic", 2)
    noise = _pick(city, "noise", 2)
    parking = _pick(city, "parking", 1)
    lights = _pick(city, "streetlight", 2)
    crowd = _pick(city, "crowd", 2)
    late_noise = city.select(kind="noise", district="mirobod")[0]
    gone = city.select(kind="air_quality", district="mirobod")[0]
    cam = _pick(city, "cctv", 1)
    other_cam = city.select(kind="cctv", district=OTHER)[0]
    points = []
    for minutes, seq in ((3, 1), (1, 2)):
        t = ago(minutes)
        points += [
            reading(
                city, air[0], t, seq, pm25=87.5, pm10=140.2, no2=61.0, o3=12.0, so2=18.0, co=1.9
            ),
            reading(
                city, air[1], t, seq, pm25=20.0, pm10=40.0, no2=30.0, o3=50.0, so2=10.0, co=0.5
            ),
            reading(
                city,
                traffic[0],
                t,
                seq,
                intensity=600.0,
                occupancy=0.2,
                avg_speed=25.0,
                congested=False,
            ),
            reading(
                city,
                traffic[1],
                t,
                seq,
                intensity=900.0,
                occupancy=0.1,
                avg_speed=50.0,
                congested=False,
            ),
            reading(city, noise[0], t, seq, laeq=60.0, lamax=75.0, la90=50.0),
            reading(city, noise[1], t, seq, laeq=40.0, lamax=55.0, la90=35.0),
            reading(city, parking[0], t, seq, occupancy=0.8),
            reading(
                city,
                crowd[0],
                t,
                seq,
                people_count=100,
                occupancy=0.2,
                avg_speed=1.0,
                congested=False,
            ),
            reading(
                city,
                crowd[1],
                t,
                seq,
                people_count=300,
                occupancy=0.4,
                avg_speed=1.0,
                congested=False,
            ),
        ]
    points += [
        reading(city, lights[0], ago(5), 1, power_state="on", power=80.0, status="ok"),
        reading(city, lights[1], ago(5), 1, power_state="off", power=0.0, status="defective_lamp"),
        reading(city, late_noise, ago(20), 1, laeq=50.0, lamax=60.0, la90=40.0),  # stale
        reading(city, gone, ago(4), 1, pm25=10.0, pm10=20.0, no2=10.0, o3=10.0, so2=1.0, co=0.1),
        *status(city, gone, ago(2), "offline"),  # said goodbye after its last reading
        event(
            city,
            cam[0],
            ago(2),
            1,
            "intrusion",
            "high",
            zone="gate",
            object_class="person",
            confidence=0.9,
        ),
        event(city, cam[0], ago(1), 2, "loitering", "critical", zone="gate", dwell_s=300.0),
        event(
            city,
            other_cam,
            ago(1),
            1,
            "line_crossing",
            "low",
            line="l1",
            direction="in",
            object_class="car",
        ),
    ]
    write(api_settings, points)
    _incidents(api_settings, cam[0].id, other_cam.id)
    return {"air": air, "late_noise": late_noise, "gone": gone, "fresh": 2 + 2 + 2 + 1 + 2 + 2}


def _incident(district: str, severity: str, device: str, minutes: float) -> inc.Incident:
    return inc.open_incident(
        city="tashkent",
        district=district,
        rule_id="intrusion",
        rule_type="event",
        severity=severity,
        place=f"{district}-{severity}-{minutes}",
        devices=[device],
        opened_at=ago(minutes),
        value=None,
        message="m",
        event="intrusion",
    )


def _incidents(settings: ApiSettings, cam: str, other_cam: str) -> None:
    """Open incidents: two in D, one low in OTHER; a resolved one and an old one in D."""

    async def go() -> None:
        client = InfluxClient(settings.influx)
        store = inc.IncidentStore(client)
        try:
            for made in (
                _incident(D, "high", cam, 3),
                _incident(D, "critical", cam, 2),
                _incident(OTHER, "low", other_cam, 1),
                _incident(D, "high", cam, 60 * 24 * 8),  # opened before the 7-day look-back
            ):
                await store.open(made)
            resolved = _incident(D, "medium", cam, 30)
            await store.open(resolved)
            await store.transition(resolved.id, inc.State.RESOLVED, "tester", "done")
        finally:
            await client.close()

    asyncio.run(go())


def _district(client: TestClient) -> dict[str, Any]:
    response = client.get(f"/v1/cities/tashkent/districts/{D}/overview")
    assert response.status_code == 200, response.text
    return response.json()


def test_air_quality_index_and_driving_pollutant(
    client: TestClient, scenario: dict[str, Any]
) -> None:
    body = _district(client)["air_quality"]
    means = {"pm25": (87.5 + 20) / 2, "pm10": (140.2 + 40) / 2, "no2": 45.5, "o3": 31.0}
    expected = aqi.aqi(means)
    assert expected is not None
    assert body["aqi"]["value"] == expected[0] == 146  # PM2.5 53.75 in 35.5-55.4 -> 101-150
    assert body["driving_pollutant"] == "pm25"
    assert body["category"] == "Unhealthy for Sensitive Groups"
    assert body["aqi"]["devices"] == 2
    assert body["aqi"]["expected"] == 4
    assert body["worst_device_aqi"] == aqi.sub_index("pm25", 87.5) == 173
    assert body["pollutants"]["pm25"]["value"] == pytest.approx(53.75)
    ex = body["who_exceedances"]
    assert (ex["pm25"]["devices_above"], ex["pm25"]["devices"]) == (2, 2)
    assert (ex["pm10"]["devices_above"], ex["no2"]["devices_above"], ex["o3"]["devices_above"]) == (
        1,
        2,
        0,
    )
    assert ex["pm25"]["guideline"] == 15.0


def test_each_figure_says_its_basis_and_freshness(
    client: TestClient, scenario: dict[str, Any]
) -> None:
    body = _district(client)
    figure = body["traffic"]["avg_speed"]
    assert figure["devices"] == 2
    newest = datetime.fromisoformat(figure["newest"])
    end = datetime.fromisoformat(body["window"]["to"])
    assert 0 <= (end - newest).total_seconds() == pytest.approx(figure["age_s"], abs=0.01)
    assert (end - newest).total_seconds() < 120
    assert body["window"]["seconds"] == 900
    assert body["parking"]["occupancy"]["devices"] == 1


def test_traffic_noise_parking_lights_crowd(client: TestClient, scenario: dict[str, Any]) -> None:
    body = _district(client)
    t = body["traffic"]
    assert t["avg_speed"]["value"] == pytest.approx(37.5)
    assert t["congestion_index"]["value"] == pytest.approx(0.25)  # (1-25/50 + 0) / 2
    assert t["free_flow_kmh"] == 50.0
    assert t["volume"]["value"] == pytest.approx(1500.0)
    n = body["noise"]
    assert n["laeq"]["value"] == pytest.approx(10 * math.log10((1e6 + 1e4) / 2), abs=1e-3)
    assert n["who_guideline_db"] in (53.0, 45.0)
    assert n["share_above_who"]["value"] == pytest.approx(0.5)  # 60 above either, 40 below both
    assert body["parking"]["occupancy"]["value"] == pytest.approx(0.8)
    assert body["streetlights"]["on"]["value"] == 1
    assert body["streetlights"]["failed"]["value"] == 1
    assert body["crowd"]["people"]["value"] == pytest.approx(400.0)


def test_devices_online_stale_offline(
    client: TestClient, city: City, scenario: dict[str, Any]
) -> None:
    body = _district(client)["devices"]
    total = len(city.select(district=D))
    assert body["total"] == total
    # Readings within their stale limit (streetlights: 2 cadences); events are not readings.
    assert body["online"] == scenario["fresh"]
    assert body["online"] + body["stale"] + body["offline"] == total
    city_body = client.get("/v1/cities/tashkent/overview").json()["devices"]
    assert city_body["stale"] == 1  # the noise sensor silent for 20 min
    assert city_body["online"] == scenario["fresh"]  # `gone` said offline after its reading
    assert city_body["total"] == len(city.devices)


def test_incidents_are_the_open_ones_of_the_incident_store(
    client: TestClient, scenario: dict[str, Any]
) -> None:
    district = _district(client)["incidents"]
    assert district["by_severity"] == {"low": 0, "medium": 0, "high": 1, "critical": 1}
    assert district["total"] == 2 and district["devices"] == 1
    assert "incident store" in district["source"]
    whole = client.get("/v1/cities/tashkent/overview").json()["incidents"]
    assert whole["by_severity"]["low"] == 1
    assert whole["total"] == 3
    # The same incidents the incident list shows as open (tiles and feeds agree).
    listed = client.get("/v1/incidents", params={"limit": 50}).json()["items"]
    assert len([i for i in listed if i["state"] != "resolved"]) == whole["total"]


def test_city_overview_spans_districts(client: TestClient, scenario: dict[str, Any]) -> None:
    body = client.get("/v1/cities/tashkent/overview").json()
    assert body["district"] is None
    assert body["air_quality"]["aqi"]["devices"] == 3  # `gone` reported 4 min ago: in the window
    assert body["air_quality"]["aqi"]["devices"] <= body["air_quality"]["aqi"]["expected"]


def test_window_in_the_past_sees_nothing(client: TestClient, scenario: dict[str, Any]) -> None:
    body = client.get(
        "/v1/cities/tashkent/overview",
        params={"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T01:00:00Z"},
    ).json()
    assert body["air_quality"]["aqi"]["value"] is None
    assert body["air_quality"]["aqi"]["devices"] == 0
    assert body["window"]["seconds"] == 3600


def test_unknown_city_or_district_is_404(client: TestClient) -> None:
    assert client.get("/v1/cities/almaty/overview").status_code == 404
    assert client.get("/v1/cities/tashkent/districts/nowhere/overview").status_code == 404


def test_districts_geojson_carries_kpis(
    client: TestClient, city: City, scenario: dict[str, Any]
) -> None:
    body = client.get("/v1/cities/tashkent/districts").json()
    assert body["type"] == "FeatureCollection"
    assert {f["id"] for f in body["features"]} == {d.id for d in city.districts}
    props = next(f for f in body["features"] if f["id"] == D)["properties"]
    assert props["aqi"] == 146
    assert props["congestion_index"] == pytest.approx(0.25)
    assert props["incidents"] == 2
    assert next(f for f in body["features"] if f["id"] == OTHER)["properties"]["aqi"] is None
    assert body["features"][0]["geometry"]["type"] == "Polygon"


def test_cities_list_and_city(client: TestClient, city: City) -> None:
    items = client.get("/v1/cities").json()["items"]
    assert [c["id"] for c in items] == ["tashkent"]
    assert items[0]["devices"] == len(city.devices)
    assert client.get("/v1/cities/tashkent").json()["districts"] == len(city.districts)


def test_device_list_filters_by_status(client: TestClient, scenario: dict[str, Any]) -> None:
    stale = client.get("/v1/devices", params={"status": "stale"}).json()["items"]
    assert [d["id"] for d in stale] == [scenario["late_noise"].id]
    assert stale[0]["status"] == "stale" and stale[0]["last_seen"] is not None
    offline = client.get(
        "/v1/devices", params={"status": "offline", "kind": "air_quality", "district": "mirobod"}
    ).json()
    assert scenario["gone"].id in [d["id"] for d in offline["items"]]
    online = client.get("/v1/devices", params={"status": "online", "limit": 50}).json()["items"]
    assert len(online) == scenario["fresh"]
    one = client.get(f"/v1/devices/{scenario['air'][0].id}").json()
    assert one["status"] == "online"
    assert client.get("/v1/devices", params={"status": "asleep"}).status_code == 422


@pytest.fixture
def cached_client(
    api_settings: ApiSettings, city: City, keys: dict[str, str]
) -> Iterator[TestClient]:
    """A client of an app with a long overview cache TTL."""
    settings = api_settings.model_copy(update={"overview_cache_ttl": 300.0})
    with TestClient(create_app(settings, city), headers={"X-API-Key": keys["read"]}) as c:
        yield c


def test_cache_serves_the_same_snapshot_within_its_ttl(
    cached_client: TestClient,
    client: TestClient,
    api_settings: ApiSettings,
    city: City,
    scenario: dict[str, Any],
) -> None:
    first = cached_client.get(f"/v1/cities/tashkent/districts/{D}/overview").json()
    # A snapshot enters the cache with the city's overview already made: a poll after a
    # refresh is answered from it, not after a city's worth of Python.
    cache = cached_client.app.state.snapshots  # type: ignore[attr-defined]
    assert [None in f.result().views for _, f in cache._entries.values()] == [True]
    # The city overview and the GeoJSON share the district overview's snapshot.
    city_view = cached_client.get("/v1/cities/tashkent/overview").json()
    assert city_view["generated_at"] == first["generated_at"]
    extra = city.select(kind="traffic", district=D)[2]
    write(
        api_settings,
        [
            reading(
                city,
                extra,
                ago(0.5),
                9,
                intensity=0.0,
                occupancy=0.9,
                avg_speed=0.0,
                congested=True,
            )
        ],
    )
    again = cached_client.get(f"/v1/cities/tashkent/districts/{D}/overview").json()
    assert again == first  # within the TTL: the cached snapshot
    # The uncached app (ttl 0) sees the new reading at once.
    fresh = client.get(f"/v1/cities/tashkent/districts/{D}/overview").json()
    assert fresh["traffic"]["avg_speed"]["devices"] == 3
    assert fresh["traffic"]["avg_speed"]["value"] == pytest.approx(25.0)
    # A different window is a different cache entry.
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    fixed = cached_client.get(
        f"/v1/cities/tashkent/districts/{D}/overview", params={"to": now}
    ).json()
    assert fixed["traffic"]["avg_speed"]["devices"] == 3


def test_aqi_breakpoints_match_the_epa_table() -> None:
    assert [
        aqi.sub_index("pm25", c) for c in (0, 9.0, 9.1, 35.4, 35.5, 55.4, 125.4, 225.4, 325.4, 999)
    ] == [0, 50, 51, 100, 101, 150, 200, 300, 500, 500]
    assert [aqi.sub_index("pm10", c) for c in (54, 55, 154, 254, 354, 424, 604)] == [
        50,
        51,
        100,
        150,
        200,
        300,
        500,
    ]
    assert aqi.sub_index("no2", 100 * 1.88) == 100  # 100 ppb
    assert aqi.sub_index("o3", 70 * 1.96) == 100  # 70 ppb (8 h table)
    assert aqi.sub_index("o3", 300 * 1.96) == 249  # 1 h table above 200 ppb
    assert aqi.aqi({}) is None
    assert aqi.category(146) == "Unhealthy for Sensitive Groups"
