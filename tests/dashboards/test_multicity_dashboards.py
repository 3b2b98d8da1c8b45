"""Grafana provisioning for a deployment of two cities, each with its own database.

Generated from two registries (`--registry a,b`): one datasource per city on its own
database, every dashboard's `city` variable choosing that datasource, alert rules per
city, and a region board comparing the cities. The region board's queries run against
the session's real InfluxDB, each on its own city's database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from control import cli
from control.stack import Influxd
from dashboards import build
from safecity import registry
from safecity.citygen import builtin_cities
from safecity.influx import InfluxClient
from safecity.lineprotocol import encode_many
from safecity.readings import Reading, format_ts, parse
from safecity.registry import Cities
from safecity.schema import reading_point
from safecity.settings import InfluxSettings

LAEQ = {"tashkent": 61.0, "samarkand": 74.0}


def load_yaml(path: Path) -> Any:
    """Our YAML files are a comment line plus JSON."""
    return json.loads(path.read_text(encoding="utf-8").removeprefix(build.HEADER))


@pytest.fixture(scope="module")
def cities() -> Cities:
    """Tashkent and Samarkand."""
    return builtin_cities(["tashkent", "samarkand"])


@pytest.fixture(scope="module")
def generated(cities: Cities, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`safecity dashboards build --registry tashkent.jsonl,samarkand.jsonl --out DIR`."""
    base = tmp_path_factory.mktemp("grafana-multicity")
    paths = []
    for city in cities.values():
        path = base / f"{city.id}.jsonl"
        registry.write(city, path)
        paths.append(str(path))
    out = base / "grafana"
    argv = ["dashboards", "build", "--out", str(out), "--registry", ",".join(paths)]
    assert cli.main(argv) == 0
    assert cli.main([*argv, "--check"]) == 0
    return out


def boards(out: Path) -> dict[str, dict[str, Any]]:
    """The generated dashboards by uid."""
    found = [json.loads(p.read_text()) for p in sorted((out / "dashboards").glob("*.json"))]
    return {b["uid"]: b for b in found}


def test_a_datasource_per_city_and_every_board_follows_the_city(
    generated: Path, cities: Cities
) -> None:
    datasources = load_yaml(generated / "provisioning/datasources/safecity.yaml")["datasources"]
    assert [(d["name"], d["uid"], d["jsonData"]["dbName"]) for d in datasources] == [
        (
            "safecity tashkent",
            "safecity-influxdb-tashkent",
            "${SAFECITY_INFLUX__DATABASE}_tashkent",
        ),
        (
            "safecity samarkand",
            "safecity-influxdb-samarkand",
            "${SAFECITY_INFLUX__DATABASE}_samarkand",
        ),
    ]
    # The same names InfluxSettings.database_for gives every service.
    settings = InfluxSettings(database="safecity")
    assert [settings.database_for(c, cities.ids) for c in cities.ids] == [
        "safecity_tashkent",
        "safecity_samarkand",
    ]
    found = boards(generated)
    assert len(found) == 9 and "safecity-region" in found
    for uid, board in found.items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        city = variables["city"]
        assert city["type"] == "custom" and city["query"] == "tashkent,samarkand", uid
        if uid == "safecity-region":
            continue
        assert [v["name"] for v in board["templating"]["list"]][:2] == ["city", "source"]
        source = variables["source"]
        assert source["type"] == "datasource" and source["query"] == "influxdb"
        assert source["regex"] == "/^safecity $city$/" and source["hide"] == 2
        # Every query of the board goes to the chosen city's datasource.
        text = json.dumps(board)
        assert "safecity-influxdb" not in text, uid
        for panel in board["panels"]:
            assert panel["datasource"] == {"type": "influxdb", "uid": "${source}"}
            for t in panel["targets"]:
                assert t["datasource"] == {"type": "influxdb", "uid": "${source}"}
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                assert var["datasource"] == {"type": "influxdb", "uid": "${source}"}
    geomap = next(p for p in found["safecity-city-overview"]["panels"] if p["type"] == "geomap")
    assert len(geomap["targets"]) == sum(len(c.districts) for c in cities.values())


def test_alert_rules_are_per_city_on_the_citys_datasource(generated: Path) -> None:
    rules = load_yaml(generated / "provisioning/alerting/safecity.yaml")["groups"][0]["rules"]
    single = build.alert_rules()
    assert len(rules) == 2 * len(single)
    uids = [r["uid"] for r in rules]
    assert len(set(uids)) == len(uids) and all(len(u) <= 40 for u in uids)
    assert len({r["title"] for r in rules}) == len(rules)
    for rule in rules:
        city = rule["uid"].rsplit("-", 1)[1]
        assert rule["data"][0]["datasourceUid"] == f"safecity-influxdb-{city}"
        assert all("$" not in v for v in rule["labels"].values())


def test_the_single_city_build_is_the_committed_one(cities: Cities) -> None:
    assert build.files(cities["tashkent"]) == build.files()
    region = json.loads(build.files()["dashboards/region.json"])
    for panel in region["panels"]:
        assert all(t["datasource"]["uid"] == build.DATASOURCE_UID for t in panel["targets"])


def _noise(ts: datetime, seq: int, laeq: float) -> Reading:
    payload = json.dumps(
        {"ts": format_ts(ts), "seq": seq, "values": {"laeq": laeq, "lamax": laeq + 8, "la90": 50}}
    ).encode()
    reading = parse("noise", payload, past_window=None, future_window=None)
    assert isinstance(reading, Reading)
    return reading


@pytest.fixture(scope="module")
def databases(influxd: Influxd, cities: Cities) -> Iterator[dict[str, str]]:
    """Each city's database with its own noise readings."""
    prefix = f"dash_mc_{secrets.token_hex(4)}"
    now = datetime.now(UTC).replace(microsecond=0)

    async def seed() -> dict[str, str]:
        base = InfluxClient(InfluxSettings(url=influxd.url, database=prefix))
        out = {}
        try:
            for city in cities.values():
                client = base.for_city(city.id, cities.ids)
                out[city.id] = client.settings.database
                await client.ensure_database()
                device = city.select(kind="noise")[0]
                points = [
                    reading_point(
                        city.id, device, _noise(now - timedelta(minutes=m), m, LAEQ[city.id])
                    )
                    for m in (1, 2, 3)
                ]
                await client.write(encode_many(points))
        finally:
            await base.close()
        return out

    made = asyncio.run(seed())
    yield made
    for db in made.values():
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"{influxd.url}/query", data={"q": f'DROP DATABASE "{db}"'}, timeout=5)


def _render(query: str, cities: str) -> str:
    fixed = {
        "timeFilter": "time > now() - 1h",
        "__interval": "1m",
        "city": cities,
        "district": ".*",
    }
    return re.sub(r"\$(\w+)", lambda m: fixed[m.group(1)], query)


def test_region_targets_read_each_city_from_its_own_database(
    generated: Path, databases: dict[str, str], influxd: Influxd
) -> None:
    region = boards(generated)["safecity-region"]
    ran = 0
    for panel in region["panels"]:
        assert panel["datasource"] == {"type": "datasource", "uid": "-- Mixed --"}
        assert [t["alias"] for t in panel["targets"]] == ["Tashkent", "Samarkand"]
        for t in panel["targets"]:
            city = t["datasource"]["uid"].removeprefix("safecity-influxdb-")
            response = httpx.post(
                f"{influxd.url}/query",
                data={"q": _render(t["query"], "(tashkent|samarkand)"), "db": databases[city]},
                timeout=20,
            ).json()
            assert "error" not in response["results"][0], (t["query"], response)
            ran += 1
            if "laeq" in t["query"]:
                rows = response["results"][0]["series"][0]["values"]
                values = [v for _, v in rows if v is not None]
                assert values and all(v == pytest.approx(LAEQ[city]) for v in values)
    assert ran == 2 * len(region["panels"]) >= 12
