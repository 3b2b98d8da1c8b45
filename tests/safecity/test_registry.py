"""The city registry: the default city, generation, the file format and its error messages."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from safecity import catalogue
from safecity.citygen import contains, generate, voronoi_cells
from safecity.errors import RegistryError
from safecity.registry import City, default_city, geojson, load, loads, write
from safecity.topics import IDENTIFIER

TASHKENT_DISTRICTS = {
    "Bektemir",
    "Chilanzar",
    "Yashnobod",
    "Mirobod",
    "Mirzo Ulugbek",
    "Olmazor",
    "Sergeli",
    "Shaykhontohur",
    "Uchtepa",
    "Yakkasaray",
    "Yunusabad",
    "Yangihayot",
}


@pytest.fixture(scope="module")
def tashkent() -> City:
    return default_city()


def _check_city(city: City) -> None:
    """Invariants every registry must hold."""
    ids = [d.id for d in city.devices]
    assert len(ids) == len(set(ids))
    assert all(IDENTIFIER.fullmatch(i) for i in ids)
    district_ids = [d.id for d in city.districts]
    assert len(district_ids) == len(set(district_ids))
    assert all(IDENTIFIER.fullmatch(i) for i in district_ids)
    assert IDENTIFIER.fullmatch(city.id)
    by_id = {d.id: d for d in city.districts}
    for device in city.devices:
        assert device.kind in catalogue.KINDS
        district = by_id[device.district]
        assert contains(district.polygon, *device.location), device
    for district in city.districts:
        assert district.polygon[0] == district.polygon[-1], district.id
        assert contains(district.polygon, *district.centroid), district.id


def test_default_city_is_tashkent(tashkent: City) -> None:
    assert tashkent.id == "tashkent"
    assert tashkent.name == "Tashkent"
    assert tashkent.record.country == "UZ"
    assert tashkent.record.timezone == "Asia/Tashkent"
    assert {d.name for d in tashkent.districts} == TASHKENT_DISTRICTS
    assert len(tashkent.districts) == 12


def test_default_city_devices(tashkent: City) -> None:
    assert len(tashkent.devices) >= 200
    assert {d.kind for d in tashkent.devices} == set(catalogue.KINDS)
    _check_city(tashkent)
    # Tashkent is at ~41.3 N, 69.3 E.
    for device in tashkent.devices:
        lon, lat = device.location
        assert 69.0 < lon < 69.6 and 41.0 < lat < 41.5, device


def test_default_city_lookups(tashkent: City) -> None:
    device = tashkent.devices[0]
    assert tashkent.device(device.id) == device
    assert tashkent.device("no-such-device") is None
    assert tashkent.district(device.district) is not None
    assert tashkent.district("nowhere") is None
    chilanzar_traffic = tashkent.select(kind="traffic", district="chilanzar")
    assert chilanzar_traffic
    assert all(d.kind == "traffic" and d.district == "chilanzar" for d in chilanzar_traffic)
    assert len(tashkent.select()) == len(tashkent.devices)


def test_dumps_loads_round_trip(tashkent: City) -> None:
    text = tashkent.dumps()
    again = loads(text)
    assert again == tashkent
    assert again.dumps() == text
    assert len(text.splitlines()) == 1 + len(tashkent.districts) + len(tashkent.devices)


def test_write_load_round_trip(tmp_path: Path) -> None:
    city = generate("bishkek", 50, seed=9)
    path = tmp_path / "bishkek.jsonl"
    write(city, path)
    loaded = load(path)
    assert loaded == city
    assert loaded.source == str(path)
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("name", ["tashkent", "almaty", "bishkek", "dushanbe", "Samarkand", "osh"])
def test_generate_is_deterministic_per_seed(name: str) -> None:
    a = generate(name, 120, seed=3)
    b = generate(name, 120, seed=3)
    c = generate(name, 120, seed=4)
    assert a.dumps() == b.dumps()
    assert a.dumps() != c.dumps()
    assert len(a.devices) == 120
    assert {d.kind for d in a.devices} == set(catalogue.KINDS)
    _check_city(a)
    _check_city(c)
    assert loads(a.dumps()) == a


def test_generate_known_cities_use_real_districts() -> None:
    almaty = generate("almaty", 40, seed=1)
    assert almaty.id == "almaty"
    assert almaty.record.country == "KZ"
    assert {d.name for d in almaty.districts} >= {"Medeu", "Bostandyk", "Almaly"}
    tashkent = generate("Tashkent", 40, seed=1)
    assert {d.name for d in tashkent.districts} == TASHKENT_DISTRICTS


def test_generate_unknown_city_with_district_count() -> None:
    city = generate("New Town", 30, seed=5, districts=9)
    assert city.id == "new_town"
    assert len(city.districts) == 9
    _check_city(city)


def test_generate_small_fleets() -> None:
    for devices in (1, 5, 13, 14):
        city = generate("tashkent", devices, seed=0)
        assert len(city.devices) == devices
        _check_city(city)


@pytest.mark.parametrize("devices", [0, -1, 1_000_001])
def test_generate_refuses_bad_sizes(devices: int) -> None:
    with pytest.raises(RegistryError, match="--devices"):
        generate("tashkent", devices, seed=0)


@pytest.mark.parametrize(
    ("name", "seed"),
    [("tashkent", 0), ("almaty", 1), ("bishkek", 2), ("dushanbe", 3), ("zarafshan", 4)],
)
def test_voronoi_districts_tile_without_overlap(name: str, seed: int) -> None:
    city = generate(name, 20, seed=seed, districts=7)
    polygons = [d.polygon for d in city.districts]
    xs = [x for p in polygons for x, _ in p]
    ys = [y for p in polygons for _, y in p]
    rng = random.Random(seed)
    inside_counts = []
    for _ in range(3000):
        lon = rng.uniform(min(xs), max(xs))
        lat = rng.uniform(min(ys), max(ys))
        inside_counts.append(sum(contains(p, lon, lat) for p in polygons))
    assert set(inside_counts) == {1}


def test_voronoi_cells_belong_to_their_nearest_centre() -> None:
    rng = random.Random(11)
    centres = [(rng.uniform(0, 1), rng.uniform(0, 1)) for _ in range(15)]
    cells = voronoi_cells(centres, margin=0.1)
    xs = [c[0] for c in centres]
    ys = [c[1] for c in centres]
    for _ in range(2000):
        x = rng.uniform(min(xs) - 0.1, max(xs) + 0.1)
        y = rng.uniform(min(ys) - 0.1, max(ys) + 0.1)
        owners = [i for i, cell in enumerate(cells) if contains(cell, x, y)]
        nearest = min(
            range(len(centres)), key=lambda i: (centres[i][0] - x) ** 2 + (centres[i][1] - y) ** 2
        )
        assert owners == [nearest]


def test_contains() -> None:
    square = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0), (0.0, 0.0)]
    assert contains(square, 0.5, 0.5)
    assert not contains(square, 1.5, 0.5)
    assert not contains(square, 0.5, -0.1)


def test_geojson(tashkent: City) -> None:
    doc = geojson(tashkent, {"chilanzar": {"aqi": 42}})
    assert doc["type"] == "FeatureCollection"
    assert len(doc["features"]) == 12
    by_id = {f["id"]: f for f in doc["features"]}
    assert by_id["chilanzar"]["properties"] == {"id": "chilanzar", "name": "Chilanzar", "aqi": 42}
    assert by_id["chilanzar"]["geometry"]["type"] == "Polygon"
    ring = by_id["chilanzar"]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1]
    json.dumps(doc)


# --- malformed files -------------------------------------------------------------------

CITY = {
    "type": "city",
    "id": "testville",
    "name": "Testville",
    "country": "UZ",
    "timezone": "Asia/Tashkent",
    "centroid": [69.25, 41.3],
}
DISTRICT = {
    "type": "district",
    "id": "centre",
    "name": "Centre",
    "centroid": [69.25, 41.3],
    "polygon": [[69.2, 41.25], [69.3, 41.25], [69.3, 41.35], [69.2, 41.35], [69.2, 41.25]],
}
DEVICE = {
    "type": "device",
    "id": "aq-1",
    "kind": "air_quality",
    "district": "centre",
    "location": [69.25, 41.3],
}


def _lines(*records: Any) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**base, **changes}


def _without(base: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in base.items() if k != key}


def test_valid_small_file(tmp_path: Path) -> None:
    path = tmp_path / "ok.jsonl"
    path.write_text(_lines(CITY, DISTRICT, "", DEVICE), encoding="utf-8")
    city = load(path)
    assert city.id == "testville"
    assert [d.id for d in city.devices] == ["aq-1"]


MALFORMED: list[Any] = [
    pytest.param(_lines(CITY, DISTRICT, "{not json"), 3, None, id="bad-json"),
    pytest.param(_lines(CITY, DISTRICT, "[1, 2]"), 3, None, id="not-an-object"),
    pytest.param(
        _lines(CITY, DISTRICT, _with(DEVICE, kind="submarine")), 3, "kind", id="unknown-kind"
    ),
    pytest.param(
        _lines(CITY, DISTRICT, _with(DEVICE, kind="Air Quality")), 3, "kind", id="invalid-kind"
    ),
    pytest.param(
        _lines(CITY, DISTRICT, _with(DEVICE, district="suburb")),
        3,
        "district",
        id="unknown-district",
    ),
    pytest.param(
        _lines(CITY, DISTRICT, DEVICE, _with(DEVICE, location=[69.26, 41.31])),
        4,
        "id",
        id="duplicate-device",
    ),
    pytest.param(_lines(CITY, DISTRICT, DISTRICT), 3, "id", id="duplicate-district"),
    pytest.param(
        _lines(CITY, DISTRICT, _without(DEVICE, "location")), 3, "location", id="missing-field"
    ),
    pytest.param(_lines(_without(CITY, "country"), DISTRICT), 1, "country", id="city-missing"),
    pytest.param(_lines(DISTRICT, CITY), 1, "type", id="first-record-not-city"),
    pytest.param(
        _lines(CITY, DISTRICT, _with(DEVICE, location="here")),
        3,
        "location",
        id="wrong-type-location",
    ),
    pytest.param(_lines(CITY, _with(DISTRICT, name=42)), 2, "name", id="wrong-type-name"),
    pytest.param(
        _lines(CITY, DISTRICT, _with(DEVICE, location=[200.0, 41.3])),
        3,
        "location",
        id="longitude-out-of-range",
    ),
    pytest.param(_lines(CITY, DISTRICT, _with(DEVICE, extra=1)), 3, "extra", id="extra-field"),
    pytest.param(
        _lines(CITY, DISTRICT, _with(DEVICE, type="sensor")), 3, "type", id="unknown-record-type"
    ),
    pytest.param(_lines(CITY, CITY), 2, None, id="second-city"),
    pytest.param(
        _lines(CITY, _with(DISTRICT, polygon=[[69.2, 41.25], [69.3, 41.25]])),
        2,
        "polygon",
        id="polygon-too-short",
    ),
]


@pytest.mark.parametrize(("text", "line", "field"), MALFORMED)
def test_malformed_file_names_file_line_and_field(
    tmp_path: Path, text: str, line: int, field: str | None
) -> None:
    path = tmp_path / "city.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RegistryError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}:"), message
    assert "\n" not in message
    if field is not None:
        # The field, or a path inside it ('location.0').
        assert f"field '{field}" in message, message


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(RegistryError, match="empty registry"):
        load(path)


def test_missing_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="cannot read registry"):
        load(tmp_path / "absent.jsonl")
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(RegistryError, match="not UTF-8"):
        load(path)


BAD_IDS = ["AQ-1", "aq 1", "a/b", "x#", "x+", "\u00e91", "a" * 65, "_a", "a\n"]


@pytest.mark.parametrize("record", ["city", "district", "device"])
def test_invalid_identifiers_refused(tmp_path: Path, record: str) -> None:
    """Ids become MQTT topic levels and InfluxDB tags: only ^[a-z0-9][a-z0-9_.-]{0,63}$."""
    accepted = []
    messages = []
    for bad in BAD_IDS:
        city, district, device = CITY, DISTRICT, DEVICE
        if record == "city":
            city, line = _with(CITY, id=bad), 1
        elif record == "district":
            district, line = _with(DISTRICT, id=bad), 2
            device = _with(DEVICE, district=bad)
        else:
            device, line = _with(DEVICE, id=bad), 3
        path = tmp_path / "city.jsonl"
        path.write_text(_lines(city, district, device), encoding="utf-8")
        try:
            load(path)
        except RegistryError as exc:
            messages.append((str(exc), f"{path}:{line}: field 'id'"))
        else:
            accepted.append(bad)
    assert accepted == []
    assert [m for m, prefix in messages if not m.startswith(prefix)] == []
