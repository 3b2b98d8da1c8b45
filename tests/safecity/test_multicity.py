"""Several cities in one deployment: the registry setting, loading, built-in cities, databases."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from control.stack import Influxd
from ingest.settings import IngestSettings
from safecity import registry
from safecity.citygen import builtin, builtin_cities
from safecity.errors import RegistryError
from safecity.influx import InfluxClient, quote_ident
from safecity.knowncities import KNOWN_CITIES
from safecity.lineprotocol import Point, encode_many
from safecity.registry import (
    Cities,
    default_city,
    load_cities,
    load_or_default,
    registry_files,
    write,
)
from safecity.settings import InfluxSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SAFECITY_ variable from the outside, and no .env file in the working directory."""
    for key in list(os.environ):
        if key.startswith("SAFECITY_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def two_files(tmp_path: Path) -> tuple[Path, Path]:
    """Tashkent and the built-in Samarkand as two registry files."""
    a, b = tmp_path / "a-tashkent.jsonl", tmp_path / "b-samarkand.jsonl"
    write(default_city(), a)
    write(builtin("samarkand"), b)
    return a, b


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/srv/a.jsonl", ("/srv/a.jsonl",)),
        ("/srv/a.jsonl, /srv/b.jsonl", ("/srv/a.jsonl", "/srv/b.jsonl")),
        ('["/srv/a.jsonl", "/srv/b.jsonl"]', ("/srv/a.jsonl", "/srv/b.jsonl")),
        ("/srv/cities", ("/srv/cities",)),
    ],
)
def test_registry_setting_forms(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: tuple[str, ...]
) -> None:
    monkeypatch.setenv("SAFECITY_REGISTRY", value)
    assert IngestSettings().registry == tuple(Path(p) for p in expected)


def test_registry_setting_empty_and_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFECITY_REGISTRY", "")
    assert IngestSettings().registry == ()
    # A --registry flag hands the text over as it was typed.
    assert IngestSettings(registry="x.jsonl,y.jsonl").registry == (
        Path("x.jsonl"),
        Path("y.jsonl"),
    )
    assert IngestSettings(registry=Path("z.jsonl")).registry == (Path("z.jsonl"),)


def test_registry_setting_refuses_a_bad_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFECITY_REGISTRY", '["a.jsonl", 3]')
    with pytest.raises(ValidationError, match="JSON list must hold path strings"):
        IngestSettings()


def test_no_registry_is_tashkent() -> None:
    cities = load_cities(())
    assert cities.ids == ("tashkent",)
    assert cities.first == default_city()
    assert load_or_default(()) == default_city()


def test_load_several_files_in_order(two_files: tuple[Path, Path]) -> None:
    a, b = two_files
    cities = load_cities((b, a))
    assert isinstance(cities, Cities)
    assert list(cities) == ["samarkand", "tashkent"]
    assert cities.first.id == "samarkand"
    assert len(cities) == 2
    assert cities["tashkent"].source == str(a)
    samarkand_device = cities["samarkand"].devices[0]
    assert cities.device("samarkand", samarkand_device.id) == samarkand_device
    # A device is found only in its own city: the same id under another city is unknown.
    assert cities.device("tashkent", samarkand_device.id) is None
    assert cities.device("almaty", samarkand_device.id) is None
    owner = cities.owner(samarkand_device.id)
    assert owner is not None and owner.id == "samarkand"
    assert cities.owner("no-such-device") is None
    # The home city of several, for a caller that serves one.
    assert load_or_default((b, a)).id == "samarkand"
    assert load_or_default(f"{a},{b}").id == "tashkent"


def test_a_directory_is_its_jsonl_files_by_name(
    tmp_path: Path, two_files: tuple[Path, Path]
) -> None:
    (tmp_path / "notes.txt").write_text("not a registry\n")
    assert registry_files([tmp_path]) == two_files
    assert load_cities([tmp_path]).ids == ("tashkent", "samarkand")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RegistryError, match="holds no"):
        load_cities([empty])


def test_a_device_in_two_cities_is_refused_naming_both_files(tmp_path: Path) -> None:
    tashkent = default_city()
    other = builtin("bishkek")
    clash = other.devices[0].model_copy(update={"id": tashkent.devices[0].id})
    a, b = tmp_path / "tashkent.jsonl", tmp_path / "bishkek.jsonl"
    write(tashkent, a)
    write(registry.City(other.record, other.districts, (clash, *other.devices[1:])), b)
    with pytest.raises(RegistryError) as info:
        load_cities([a, b])
    message = str(info.value)
    assert str(a) in message and str(b) in message
    assert tashkent.devices[0].id in message


def test_a_city_twice_is_refused(two_files: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = two_files
    copy = tmp_path / "copy" / "tashkent.jsonl"
    copy.parent.mkdir()
    write(default_city(), copy)
    with pytest.raises(RegistryError, match="defined twice"):
        load_cities([a, copy])
    with pytest.raises(RegistryError, match="no city"):
        Cities(())


def test_builtin_cities() -> None:
    assert builtin("tashkent") == default_city()
    samarkand = builtin("samarkand")
    assert samarkand == builtin("samarkand")  # deterministic
    assert samarkand.record.timezone == "Asia/Samarkand"
    assert len(samarkand.districts) == 5
    assert all(d.id.startswith("samarkand-") for d in samarkand.devices)
    tashkent_ids = {d.id for d in default_city().devices}
    for name in KNOWN_CITIES:
        city = builtin(name)
        assert city.id == name
        if name != "tashkent":
            assert not tashkent_ids & {d.id for d in city.devices}
    # Every built-in city can sit beside every other one.
    assert len(builtin_cities(list(KNOWN_CITIES))) == len(KNOWN_CITIES)
    with pytest.raises(RegistryError, match="no built-in registry for city 'atlantis'"):
        builtin("atlantis")


def test_database_for() -> None:
    influx = InfluxSettings()
    # One city: the database as configured, as every single-city deployment has it.
    assert influx.database_for("tashkent", ["tashkent"]) == "safecity"
    assert influx.database_for("tashkent", []) == "safecity"
    # Several: one database per city.
    both = ("tashkent", "samarkand")
    assert influx.database_for("tashkent", both) == "safecity_tashkent"
    assert influx.database_for("samarkand", both) == "safecity_samarkand"
    # A template names each city's database itself, even for one city.
    templated = InfluxSettings(database="city_{city}_data")
    assert templated.database_for("tashkent", ["tashkent"]) == "city_tashkent_data"
    assert templated.database_for("samarkand", both) == "city_samarkand_data"
    with pytest.raises(ValidationError):
        InfluxSettings(database="bad name {city}")


def test_each_city_gets_its_own_database_and_policies(influxd: Influxd, influx_db: str) -> None:
    """Views of one client write into and read from each city's own database only."""
    settings = InfluxSettings(url=influxd.url, database=influx_db)
    both = ("tashkent", "samarkand")
    now_ms = (int(time.time()) - 60) * 1000

    async def main() -> dict[str, Any]:
        client = InfluxClient(settings)
        out: dict[str, Any] = {}
        try:
            assert client.for_city("tashkent", ["tashkent"]) is client
            for city in both:
                view = client.for_city(city, both)
                await view.ensure_database()
                point = Point("air_quality", {"city": city}, {"pm25": 1.0}, now_ms)
                await view.write(encode_many([point]))
            for city in both:
                view = client.for_city(city, both)
                await view.close()  # a view's close leaves the shared pool open
                rows = [r for s in await view.query("SELECT * FROM air_quality") for r in s.rows()]
                out[city] = ([r["city"] for r in rows], await view.missing_retention_policies())
            out["databases"] = {
                r["name"] for s in await client.query("SHOW DATABASES") for r in s.rows()
            }
            for city in both:
                await client.execute(f"DROP DATABASE {quote_ident(f'{influx_db}_{city}')}")
        finally:
            await client.close()
        return out

    out = asyncio.run(main())
    assert out["tashkent"] == (["tashkent"], [])
    assert out["samarkand"] == (["samarkand"], [])
    assert {f"{influx_db}_tashkent", f"{influx_db}_samarkand"} <= out["databases"]
