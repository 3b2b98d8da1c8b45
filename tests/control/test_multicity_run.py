"""Two cities in one instance: `safecity run --cities tashkent samarkand` starts both, each
city's fleet lands in its own database, and `safecity verify` finds nothing lost, per city
and across the run, while it runs and after it stopped (time compressed: speed 10)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from control.stack import Influxd
from safecity import instance
from safecity.citygen import builtin
from safecity.registry import City, default_city, write

ROOT = Path(__file__).resolve().parents[2]
CITIES = ("tashkent", "samarkand")


def beside(home: Path) -> dict[str, str]:
    """The environment of a command typed beside the run: only SAFECITY_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFECITY_")}
    env["SAFECITY_HOME"] = str(home)
    return env


def safecity(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "control", *args],
        env=beside(home),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )


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
    env = beside(home)
    for port in ("INGEST_METRICS_PORT", "ALERTS_METRICS_PORT", "NOTIFY_METRICS_PORT"):
        env[f"SAFECITY_{port}"] = "0"
    argv = ["run", "--api-port", "0", "--mqtt-port", "0", "--influx-port", "0"]
    argv += ["--mqtt-tls-port", "0", "--speed", "10", "--cities", *CITIES]
    proc = subprocess.Popen(
        [sys.executable, "-m", "control", *argv],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 180
        while "Press Ctrl-C" not in "".join(lines[-1:]) and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line)
        printed = "".join(lines)
        assert "Press Ctrl-C" in printed, printed
        yield home, printed, proc
    finally:
        proc.send_signal(2)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if where.ledger_file.exists() and ledger_cities(where.ledger_file) >= set(CITIES):
            break
        time.sleep(1.0)
    assert ledger_cities(where.ledger_file) == set(CITIES)

    # Each city's readings in its own database, none of the other's.
    own = {"tashkent": default_city(), "samarkand": builtin("samarkand")}

    def stored(city: str) -> set[str]:
        rows = influx(state.influx_url, f"safecity_{city}", 'SHOW TAG VALUES WITH KEY = "city"')
        return {str(v[1]) for v in rows}

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(stored(c) for c in CITIES):
        time.sleep(1.0)
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

    # After Ctrl-C the instance still knows which cities (and databases) its ledger spans.
    launcher.send_signal(2)
    assert launcher.wait(timeout=90) == 0
    assert instance.running(where) is None
    assert instance.recorded_cities(where) == CITIES


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
