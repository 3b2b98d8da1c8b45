"""Two cities in one instance: `safecity run --cities tashkent samarkand` starts both, each
city's fleet lands in its own database, and `safecity verify` finds nothing lost, per city
and across the run, while it runs and after it stopped (time compressed: speed 10)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from localrun import ROOT, beside, local_run, safecity
from support import wait_for

from control.stack import Influxd
from safecity import instance
from safecity.citygen import builtin
from safecity.registry import City, default_city, write

CITIES = ("tashkent", "samarkand")


def influx(url: str, db: str, q: str) -> list[list[object]]:
    body = httpx.post(f"{url}/query", data={"q": q, "db": db}, timeout=10).json()
    result = body["results"][0]
    assert "error" not in result, result
    return [v for s in result.get("series", []) for v in s["values"]]


def ledger_cities(path: Path) -> set[str]:
    found = set()
    for line in path.read_text().splitlines():
        if line.endswith("}"):
            found.add(json.loads(line)["topic"].split("/")[2])
    return found


def verified(home: Path, *args: str) -> dict[str, Any]:
    done = safecity(home, "verify", "--json", "--settle", "5", *args)
    assert done.stdout.strip(), done.stderr
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0, report
    return report


@pytest.fixture
def two_cities(tmp_path: Path) -> Iterator[tuple[Path, str, subprocess.Popen[str]]]:
    """`safecity run --cities tashkent samarkand --speed 10` in tmp: (home, printed text,
    the launcher; stopped at the end unless the test stopped it)."""
    home = tmp_path / "home"
    with local_run(home, "--speed", "10", "--cities", *CITIES) as run:
        yield home, run.printed, run.process


@pytest.mark.timeout(480)  # two cities and several commands beside them, on a busy machine
def test_two_cities_run_each_in_its_own_database_and_verify(
    two_cities: tuple[Path, str, subprocess.Popen[str]],
) -> None:
    home, printed, launcher = two_cities
    assert re.search(r"cities\s+tashkent, samarkand", printed), printed
    assert "'safecity_tashkent', 'safecity_samarkand'" in printed
    where = instance.layout(home)
    state = instance.running(where)
    assert state is not None and state.cities == CITIES
    assert instance.recorded_cities(where) == CITIES

    # Both fleets publish: the one ledger names both cities.
    wait_for(
        lambda: where.ledger_file.exists() and ledger_cities(where.ledger_file) >= set(CITIES),
        90,
        "both cities in the ledger",
        interval=1.0,
    )
    assert ledger_cities(where.ledger_file) == set(CITIES)

    # Each city's readings in its own database, none of the other's.
    own = {"tashkent": default_city(), "samarkand": builtin("samarkand")}

    def stored(city: str) -> set[str]:
        rows = influx(state.influx_url, f"safecity_{city}", 'SHOW TAG VALUES WITH KEY = "city"')
        return {str(v[1]) for v in rows}

    wait_for(lambda: all(stored(c) for c in CITIES), 60, "readings of both cities", interval=1.0)
    for city in CITIES:
        assert stored(city) == {city}
        devices = influx(
            state.influx_url,
            f"safecity_{city}",
            'SHOW TAG VALUES FROM "noise" WITH KEY = "device_id"',
        )
        assert {str(v[1]) for v in devices} <= {d.id for d in own[city].devices}

    # verify across the run and per city, while it runs: nothing lost.
    everything = verified(home)
    assert everything["lost"] == 0 and everything["duplicated"] == 0
    assert set(everything["sent_by_city"]) == set(CITIES)
    for city in CITIES:
        report = verified(home, "--city", city)
        assert report["lost"] == 0 and int(report["acknowledged"]) > 0
        assert report["sent_by_city"] == {city: report["sent"]}
    refused = safecity(home, "verify", "--city", "almaty", "--settle", "1")
    assert refused.returncode == 2 and "not in this run" in refused.stderr

    _commands_know_the_cities(home, state, own)

    # After Ctrl-C the instance still knows which cities (and databases) its ledger spans.
    launcher.send_signal(2)
    assert launcher.wait(timeout=90) == 0
    assert instance.running(where) is None
    assert instance.recorded_cities(where) == CITIES


def _commands_know_the_cities(home: Path, state: instance.Running, own: dict[str, City]) -> None:
    """Commands beside the run know its cities: a key for one of them, certificates for all."""
    created = safecity(
        home, "apikey", "create", "--name", "sam", "--scopes", "read", "--city", "samarkand"
    )
    assert created.returncode == 0 and "not served here" not in created.stderr, created.stderr
    key = re.search(r"SAFECITY_API_KEY=(\S+)", created.stdout)
    assert key is not None, created.stdout
    headers = {"X-API-Key": key.group(1)}
    assert httpx.get(f"{state.api_url}/v1/cities/samarkand", headers=headers).status_code == 200
    assert httpx.get(f"{state.api_url}/v1/cities/tashkent", headers=headers).status_code == 404
    # One device of each city (a registry of Tashkent alone would refuse Samarkand's).
    devices = [next(iter(own[city].devices)).id for city in CITIES]
    provisioned = safecity(home, "certs", "provision", *(f"--device={d}" for d in devices))
    assert provisioned.returncode == 0, provisioned.stderr
    assert "(tashkent, samarkand)" in provisioned.stdout
    clients = {p.stem for p in (instance.layout(home).certs_dir / "clients").glob("*.crt")}
    assert set(devices) <= clients


def test_influx_init_prepares_every_city_database(
    tmp_path: Path, influxd: Influxd, influx_db: str
) -> None:
    files = [tmp_path / "tashkent.jsonl", tmp_path / "samarkand.jsonl"]
    write(default_city(), files[0])
    write(builtin("samarkand"), files[1])
    env = beside(tmp_path / "home")
    env.update(
        SAFECITY_INFLUX__URL=influxd.url,
        SAFECITY_INFLUX__DATABASE=influx_db,
        SAFECITY_REGISTRY=f"{files[0]},{files[1]}",
    )
    done = subprocess.run(
        [sys.executable, "-m", "control", "influx", "init"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    try:
        for city in CITIES:
            database = f"{influx_db}_{city}"
            assert repr(database) in done.stdout
            policies = influx(influxd.url, database, f'SHOW RETENTION POLICIES ON "{database}"')
            assert {"raw", "events", "security", "incidents"} <= {str(p[0]) for p in policies}
    finally:
        for city in CITIES:
            httpx.post(f"{influxd.url}/query", data={"q": f'DROP DATABASE "{influx_db}_{city}"'})


def test_city_show_validates_several_registries_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from control.cli import main

    files = [tmp_path / "tashkent.jsonl", tmp_path / "samarkand.jsonl"]
    write(default_city(), files[0])
    write(builtin("samarkand"), files[1])
    assert main(["city", "show", "--registry", f"{files[0]},{files[1]}"]) == 0
    out = capsys.readouterr().out
    assert "Tashkent (tashkent)" in out and "Samarkand (samarkand)" in out
    # A Bishkek registry that reuses one of Tashkent's device ids: refused, naming both.
    bishkek = builtin("bishkek")
    stolen = bishkek.devices[0].model_copy(update={"id": default_city().devices[0].id})
    clash = tmp_path / "bishkek.jsonl"
    write(City(bishkek.record, bishkek.districts, (stolen, *bishkek.devices[1:])), clash)
    assert main(["city", "show", "--registry", f"{files[0]},{clash}"]) == 2
    err = capsys.readouterr().err
    assert str(files[0]) in err and str(clash) in err
