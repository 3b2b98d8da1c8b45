"""Time series, device history, events and delivery accounting against a real InfluxDB."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from api_seed import event, ms, reading, write
from fastapi.testclient import TestClient

from api.settings import ApiSettings
from safecity import topics
from safecity.ledger import LedgerEntry
from safecity.readings import format_ts
from safecity.registry import City

T0 = datetime(2026, 1, 15, 6, 0, tzinfo=UTC) if datetime.now(UTC).year == 2026 else None


def _at(base: datetime, minute: float) -> datetime:
    return base + timedelta(minutes=minute)


@pytest.fixture(scope="module")
def data(api_settings: ApiSettings, city: City) -> dict[str, Any]:
    """Noise readings of two devices in two districts, and a few events, from the whole
    hour three hours before the module's first test."""
    base = (datetime.now(UTC) - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
    a = city.select(kind="noise", district="uchtepa")[0]
    b = city.select(kind="noise", district="mirobod")[0]
    points = [
        # minute 0 bucket: a = 50, 60, 70; minute 1 bucket: a = 40
        reading(city, a, _at(base, 0), 1, laeq=50.0, lamax=60.0, la90=40.0),
        reading(city, a, _at(base, 0.25), 2, laeq=60.0, lamax=70.0, la90=45.0),
        reading(city, a, _at(base, 0.5), 3, laeq=70.0, lamax=80.0, la90=50.0),
        reading(city, a, _at(base, 1), 4, laeq=40.0, lamax=50.0, la90=30.0),
        reading(city, b, _at(base, 0), 1, laeq=80.0, lamax=90.0, la90=60.0),
    ]
    cam = city.select(kind="cctv", district="uchtepa")[0]
    other = city.select(kind="cctv", district="mirobod")[0]
    points += [
        event(
            city,
            cam,
            _at(base, 2),
            1,
            "intrusion",
            "high",
            zone="gate",
            object_class="person",
            confidence=0.9,
        ),
        event(city, cam, _at(base, 3), 2, "loitering", "medium", zone="gate", dwell_s=120.0),
        event(
            city,
            other,
            _at(base, 4),
            1,
            "intrusion",
            "high",
            zone="door",
            object_class="car",
            confidence=0.5,
        ),
    ]
    write(api_settings, points)
    return {"a": a, "b": b, "cam": cam, "other": other, "base": base}


def _window(base: datetime, **extra: Any) -> dict[str, Any]:
    return {"from": format_ts(_at(base, 0)), "to": format_ts(_at(base, 2)), "every": "1m", **extra}


def test_district_series_aggregates(client: TestClient, data: dict[str, Any]) -> None:
    base = data["base"]
    got = {}
    for agg in ("mean", "min", "max", "p95", "count"):
        r = client.get(
            "/v1/cities/tashkent/series",
            params=_window(base, kind="noise", field="laeq", district="uchtepa", agg=agg),
        )
        assert r.status_code == 200, r.text
        got[agg] = [(p["ts"], p["value"]) for p in r.json()["points"]]
    t0, t1 = format_ts(_at(base, 0)), format_ts(_at(base, 1))
    assert got["mean"] == [(t0, 60.0), (t1, 40.0)]
    assert got["min"] == [(t0, 50.0), (t1, 40.0)]
    assert got["max"] == [(t0, 70.0), (t1, 40.0)]
    assert got["p95"] == [(t0, 70.0), (t1, 40.0)]
    assert got["count"] == [(t0, 3.0), (t1, 1.0)]


def test_city_series_spans_districts(client: TestClient, data: dict[str, Any]) -> None:
    base = data["base"]
    body = client.get(
        "/v1/cities/tashkent/series", params=_window(base, kind="noise", field="laeq", agg="max")
    ).json()
    assert body["points"][0]["value"] == 80.0
    assert body["unit"] == "dB(A)" and body["every_s"] == 60 and body["district"] is None


def test_device_history(client: TestClient, data: dict[str, Any]) -> None:
    base = data["base"]
    r = client.get(
        f"/v1/devices/{data['a'].id}/history", params=_window(base, field="lamax", agg="mean")
    )
    assert r.status_code == 200, r.text
    assert [p["value"] for p in r.json()["points"]] == [70.0, 50.0]
    assert r.json()["device_id"] == data["a"].id


@pytest.mark.parametrize(
    ("params", "name", "reason"),
    [
        ({"every": "soon"}, "every", "pattern"),
        ({"to": "0.5"}, "to", "RFC 3339"),
        ({"from": "1700000000"}, "from", "RFC 3339"),
        ({"from": "2026-01-01"}, "from", "RFC 3339"),
        ({"field": "congested"}, "field", "not a numeric field"),
        ({"agg": "median"}, "agg", "mean"),
        ({"kind": "noize"}, "kind", "unknown kind"),
    ],
)
def test_series_bad_parameters_are_422_with_reason(
    client: TestClient, params: dict[str, str], name: str, reason: str
) -> None:
    query = {"kind": "noise", "field": "laeq", **params}
    r = client.get("/v1/cities/tashkent/series", params=query)
    assert r.status_code == 422, r.text
    assert f"'{name}'" in r.json()["detail"] and reason in r.json()["detail"]


def test_series_windows_and_buckets_are_bounded_not_refused(
    client: TestClient, api_settings: ApiSettings
) -> None:
    def get(**params: str) -> dict[str, Any]:
        r = client.get(
            "/v1/cities/tashkent/series", params={"kind": "noise", "field": "laeq", **params}
        )
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    year = {"from": "2026-01-01T00:00:00Z", "to": "2026-12-31T00:00:00Z"}
    # p95 has no rollup: raw answers, and raw is held to the newest max_range.
    long = get(**year, agg="p95")
    assert long["window"]["to"] == "2026-12-31T00:00:00.000Z"
    assert long["window"]["seconds"] == api_settings.max_range  # the newest max_range kept
    # A mean in whole days: the 1d tier keeps them forever, so the year stays whole.
    daily = get(**year, every="1d")
    assert daily["window"]["seconds"] == 364 * 86_400 and daily["every_s"] == 86_400
    # Hours: the 1h tier keeps 1825 days; longer is held to its newest 1825 days.
    hourly = get(**{"from": "2016-01-01T00:00:00Z", "to": "2026-12-31T00:00:00Z", "every": "1h"})
    assert hourly["window"]["seconds"] == 1825 * 86_400
    assert hourly["every_s"] % 3600 == 0  # raised for max_points, in whole tier buckets
    assert get(every="5s")["every_s"] == api_settings.min_bucket
    month = {"from": "2026-01-01T00:00:00Z", "to": "2026-01-31T00:00:00Z", "every": "10s"}
    fewest = math.ceil(30 * 86_400 / api_settings.max_points)
    assert get(**month)["every_s"] == math.ceil(fewest / 60) * 60  # whole minutes: the 1m tier
    backwards = get(**{"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"})
    assert backwards["points"] == [] and backwards["window"]["seconds"] == 0
    early = get(**{"from": "1900-01-01T00:00:00Z", "to": "1970-01-02T00:00:00Z"})
    assert early["window"]["from"] == "1970-01-01T00:00:00.000Z"
    far = get(**{"from": "0001-01-01T00:00:00+14:00", "to": "9999-12-31T23:59:59-23:59"})
    assert far["window"]["to"] == "2200-01-01T00:00:00.000Z"
    assert "max_range" not in str(long) and "218" not in str(long["window"]["seconds"])


def test_a_field_of_another_kind_is_an_unknown_series(client: TestClient) -> None:
    r = client.get("/v1/cities/tashkent/series", params={"kind": "noise", "field": "pm25"})
    assert r.status_code == 404
    assert r.json()["detail"].startswith("unknown series noise.pm25: not a numeric field of noise")


def test_events_with_filters(client: TestClient, data: dict[str, Any]) -> None:
    base = data["base"]
    window = {"from": format_ts(_at(base, 0)), "to": format_ts(_at(base, 10))}
    response = client.get("/v1/events", params=window)
    assert response.status_code == 200, response.text
    all_ = response.json()
    assert [e["type"] for e in all_["items"]] == [
        "intrusion",
        "loitering",
        "intrusion",
    ]  # newest first
    assert all_["truncated"] is False
    first = all_["items"][1]
    assert first["details"] == {"zone": "gate", "dwell_s": 120.0}
    assert first["kind"] == "cctv" and first["severity"] == "medium"
    high = client.get(
        "/v1/events", params={**window, "severity": "high", "district": "uchtepa"}
    ).json()
    assert [(e["device_id"], e["type"]) for e in high["items"]] == [(data["cam"].id, "intrusion")]
    by_type = client.get("/v1/events", params={**window, "type": "intrusion"}).json()["items"]
    assert {e["device_id"] for e in by_type} == {data["cam"].id, data["other"].id}
    by_device = client.get("/v1/events", params={**window, "device_id": data["other"].id}).json()
    assert len(by_device["items"]) == 1
    limited = client.get("/v1/events", params={**window, "limit": 2}).json()
    assert len(limited["items"]) == 2 and limited["truncated"] is True
    assert client.get("/v1/events", params={**window, "limit": 1001}).status_code == 422
    assert client.get("/v1/events", params={**window, "severity": "dire"}).status_code == 422


def test_delivery_accounting(
    client: TestClient,
    data: dict[str, Any],
    api_settings: ApiSettings,
    keys: dict[str, str],
    city: City,
) -> None:
    base = data["base"]
    a = data["a"]
    topic = topics.telemetry_topic(city.id, a.district, a.kind, a.id)
    assert api_settings.ledger_file is not None
    with open(api_settings.ledger_file, "w") as f:
        for seq, minute, puback in (
            (1, 0, 0),
            (2, 0.25, 0),
            (3, 0.5, 0),
            (4, 1, 0),
            (5, 1.5, 0),
            (6, 1.6, 0x87),
        ):
            entry = LedgerEntry(
                a.id, "telemetry", topic, seq, ms(_at(base, minute)), "0" * 64, None, puback
            )
            f.write(entry.to_json() + "\n")
    api_settings.deadletter_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    with open(api_settings.deadletter_dir / "deadletters.jsonl", "w") as f:
        for reason in ("schema", "schema", "out_of_range"):
            f.write(
                json.dumps(
                    {"reason": reason, "detail": "x", "topic": topic, "received_at": format_ts(now)}
                )
                + "\n"
            )
        f.write(
            json.dumps(
                {
                    "reason": "bad_json",
                    "topic": "safecity/v1/tashkent/_deadletter/bad_json",
                    "received_at": format_ts(now),
                }
            )
            + "\n"
        )
        f.write('{"reason": "torn')  # a crash mid-line: skipped until completed
    operate = {"X-API-Key": keys["operate"]}
    r = client.get(
        f"/v1/devices/{a.id}/delivery",
        headers=operate,
        params={"from": format_ts(_at(base, 0)), "to": format_ts(now + timedelta(minutes=1))},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["sent"] == {"telemetry": 5, "event": 0, "status": 0}  # 0x87 was refused
    assert body["stored"] == {"telemetry": 4, "event": 0, "status": 0}
    assert body["rejected"] == {"out_of_range": 1, "schema": 2}
    assert body["last_seen"] == format_ts(_at(base, 1))
    # The read scope is not enough for delivery accounting.
    assert client.get(f"/v1/devices/{a.id}/delivery").status_code == 403
