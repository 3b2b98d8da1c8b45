"""One instance: `safecity run` in SAFECITY_HOME, and every command beside it finds it.

The commands get nothing but SAFECITY_HOME: no flags, no other exports. The run uses
random free ports, which only its instance state file tells.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from localrun import ROOT, local_run, safecity
from support import mosquitto, wait_for

from safecity import instance, topics
from safecity.registry import default_city

CITY = default_city()


def checkout_var() -> set[str]:
    """Every path under the checkout's var/ (what a test must never add to)."""
    var = ROOT / "var"
    return {str(p.relative_to(ROOT)) for p in var.rglob("*")} if var.exists() else set()


def online(api: str, key: str) -> set[str]:
    """Ids of the devices the API reports online now."""
    found: set[str] = set()
    cursor = None
    with httpx.Client(base_url=api, timeout=10, headers={"X-API-Key": key}) as client:
        while True:
            params = {"status": "online", "limit": "500", **({"cursor": cursor} if cursor else {})}
            page = client.get("/v1/devices", params=params)
            page.raise_for_status()
            body = page.json()
            found |= {item["id"] for item in body["items"]}
            cursor = body["next_cursor"]
            if not cursor:
                return found


@pytest.fixture
def running_city(tmp_path: Path) -> Iterator[tuple[Path, str, str]]:
    """`safecity run` with SAFECITY_HOME in tmp and random ports: (home, API URL, its key)."""
    home = tmp_path / "home"
    before = checkout_var()
    with local_run(home) as run:
        api = re.search(r"console \+ API\s+(http://\S+?)/\s", run.printed)
        key = re.search(r"SAFECITY_API_KEY=(\S+)", run.printed)
        assert api and key, run.printed
        yield home, api.group(1), key.group(1)
    assert not instance.layout(home).state_file.exists(), "a stopped run leaves no state file"
    # Nothing of the run (spool, dead letters, keys, ledger, ...) landed in the checkout.
    assert checkout_var() - before == set()


def test_commands_beside_a_running_city_find_it_without_flags(
    running_city: tuple[Path, str, str],
) -> None:
    home, api, make_run_key = running_city
    state = instance.running(instance.layout(home))
    assert state is not None and state.api_url == api

    # apikey create: a key the running API accepts.
    created = safecity(home, "apikey", "create", "--name", "x", "--scopes", "read")
    assert created.returncode == 0, created.stderr
    match = re.search(r"SAFECITY_API_KEY=(\S+)", created.stdout)
    assert match, created.stdout
    me = httpx.get(f"{api}/v1/me", headers={"X-API-Key": match.group(1)}, timeout=10)
    assert me.status_code == 200, me.text
    assert me.json()["name"] == "x"

    # devices list: the running city's accounts.
    listed = safecity(home, "devices", "list")
    assert listed.returncode == 0, listed.stderr
    names = {line.split()[0] for line in listed.stdout.splitlines()[1:] if line.strip()}
    assert {d.id for d in CITY.devices} | {"_ingest", "_api", "_alerts", "_simulator"} <= names

    # deadletter stats: the running city's dead letters, after a bad message.
    secrets = json.loads((home / "identity" / "secrets.json").read_text())
    device = CITY.select(kind="noise")[0]
    subprocess.run(
        [*mosquitto("mosquitto_pub", state, "_simulator", secret=secrets["_simulator"]), "-q", "1",
         "-t", topics.telemetry_topic(CITY.id, device.district, device.kind, device.id),
         "-m", "not json"],
        check=True, timeout=30,
    )  # fmt: skip

    def counted() -> bool:
        stats = safecity(home, "deadletter", "stats")
        assert stats.returncode == 0, stats.stderr
        count = int(stats.stdout.split()[0])
        return count >= 1 and str(home / "deadletter") in stats.stdout

    wait_for(counted, 60, "the bad message in `safecity deadletter stats`", interval=1.0)

    # verify: the running city's ledger, nothing lost.
    wait_for(
        lambda: instance.layout(home).ledger_file.stat().st_size > 0, 60, "a ledger", interval=1.0
    )
    verified = safecity(home, "verify")
    report = {line[:22].strip(): line[22:].strip() for line in verified.stdout.splitlines() if line}
    assert int(report["acknowledged"]) > 0, verified.stdout + verified.stderr
    assert report["lost"] == "0", verified.stdout
    assert report["duplicated"] == "0", verified.stdout
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # Not silent while it waits and reads back: what it is doing, on stderr.
    assert re.search(r"waiting up to \d+s for messages on their way", verified.stderr)
    assert re.search(r"verify: read back \d+/\d+ device series", verified.stderr)

    # A second simulator leaves every running device online: it refuses, saying why.
    everyone = {d.id for d in CITY.devices}
    wait_for(
        lambda: online(api, make_run_key) >= everyone, 120, "every device online", interval=1.0
    )
    second = safecity(home, "simulate", "--duration", "5")
    assert second.returncode == 2, second.stdout + second.stderr
    assert "take over their sessions" in second.stderr
    time.sleep(3.0)
    assert everyone - online(api, make_run_key) == set()
    broker_log = (home / "mosquitto" / "mosquitto.log").read_text(errors="replace")
    assert "already connected, closing old connection" not in broker_log


@pytest.fixture
def pretend_running(tmp_path: Path) -> Iterator[Path]:
    """An instance whose state file names a live process (not the test's: its children's
    parent would pass as the launcher), for the refusals that need no real run."""
    home = tmp_path / "home"
    holder = subprocess.Popen(["sleep", "120"])
    try:
        instance.record(
            instance.layout(home),
            instance.Running(
                pid=holder.pid,
                mqtt_host="127.0.0.1",
                mqtt_port=1883,
                influx_url="http://127.0.0.1:8086",
                api_url="http://127.0.0.1:8000",
            ),
        )
        yield home
    finally:
        holder.kill()
        holder.wait()


def test_a_second_simulator_beside_a_running_city_refuses_saying_why(
    pretend_running: Path,
) -> None:
    result = safecity(pretend_running, "simulate", "--duration", "5", "--devices", "3")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"a city is running in {pretend_running}" in result.stderr
    assert "take over their sessions" in result.stderr


def test_a_scenario_beside_a_running_city_refuses_saying_why(pretend_running: Path) -> None:
    result = safecity(pretend_running, "verify", "--scenario", "spoofed-device", "--duration", "5")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "take over their sessions" in result.stderr


def test_a_scenario_outside_the_ingest_window_says_so(tmp_path: Path) -> None:
    # Its fixed start (March) is more than the default week before now.
    result = safecity(tmp_path, "verify", "--scenario", "gunshot-yunusabad", "--start",
                      "2020-03-10T18:30:00Z")  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "outside the ingest's timestamp window" in result.stderr
    assert "SAFECITY_TS_PAST_WINDOW=604800" in result.stderr
    assert "MISSED" not in result.stdout


def test_verify_without_a_ledger_names_the_instance(tmp_path: Path) -> None:
    result = safecity(tmp_path / "empty", "verify")
    assert result.returncode == 2
    assert f"no ledger of a local city in {tmp_path / 'empty'}" in result.stderr


def test_a_state_file_of_a_dead_launcher_is_not_a_running_city(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    where = instance.layout(tmp_path)
    state = instance.Running(
        pid=gone.pid, mqtt_host="127.0.0.1", mqtt_port=1, influx_url="x", api_url="y"
    )
    instance.record(where, state)
    assert instance.running(where) is None
    instance.forget(where, gone.pid)
    assert not where.state_file.exists()


def test_every_data_path_defaults_into_the_instance(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from api.settings import ApiSettings
    from broker.settings import SecuritySettings
    from control.settings import StackSettings
    from ingest.settings import IngestSettings
    from simulators.settings import SimulatorSettings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAFECITY_HOME", str(tmp_path / "city"))
    where = instance.layout()
    assert where.root == tmp_path / "city"
    ingest = IngestSettings()
    assert (ingest.deadletter_dir, ingest.spool_dir) == (where.deadletter_dir, where.spool_dir)
    api = ApiSettings()
    assert api.api_keys_file == where.api_keys_file
    assert api.deadletter_dir == where.deadletter_dir
    assert api.audit_log_file == where.audit_log_file
    security = SecuritySettings()
    assert (security.identity_dir, security.certs_dir) == (where.identity_dir, where.certs_dir)
    assert security.broker_pidfile is None  # nothing runs there: no broker to reload
    assert StackSettings().data_dir == where.root
    assert SimulatorSettings().edge.spool_dir == where.edge_spool_dir
    # An explicit setting still wins; without SAFECITY_HOME the default is var/stack.
    monkeypatch.setenv("SAFECITY_SPOOL_DIR", "elsewhere")
    assert IngestSettings().spool_dir == Path("elsewhere")
    monkeypatch.delenv("SAFECITY_HOME")
    assert IngestSettings().deadletter_dir == Path("var/stack/deadletter")
    # .env names it as well as the environment does.
    (tmp_path / ".env").write_text("SAFECITY_HOME=from-dotenv\n")
    assert instance.home() == Path("from-dotenv")
    assert IngestSettings().deadletter_dir == Path("from-dotenv/deadletter")


def test_commands_take_the_running_instance_endpoints_unless_set(
    monkeypatch: pytest.MonkeyPatch, pretend_running: Path
) -> None:
    from broker.settings import SecuritySettings
    from ingest.settings import IngestSettings

    monkeypatch.setenv("SAFECITY_HOME", str(pretend_running))
    settings = IngestSettings()
    assert (settings.mqtt.host, settings.mqtt.port) == ("127.0.0.1", 1883)
    assert settings.influx.url == "http://127.0.0.1:8086"
    assert SecuritySettings().broker_pidfile == instance.layout().broker_pidfile
    monkeypatch.setenv("SAFECITY_INFLUX__URL", "http://influx.example:9999")
    monkeypatch.setenv("SAFECITY_MQTT__USERNAME", "_ingest")
    settings = IngestSettings()
    assert settings.influx.url == "http://influx.example:9999"
    assert (settings.mqtt.port, settings.mqtt.username) == (1883, "_ingest")


def test_a_second_run_in_a_running_instance_is_refused(pretend_running: Path) -> None:
    result = safecity(pretend_running, "run", "--api-port", "0", "--mqtt-port", "0")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"a city is already running in {pretend_running}" in result.stderr


def test_a_ledger_still_being_written_is_read_as_it_stood(tmp_path: Path) -> None:
    from control.verify import read_ledger
    from safecity.ledger import LedgerEntry

    entry = LedgerEntry("d1", "telemetry", "t", 1, 1000, "h", None, 0)
    path = tmp_path / "ledger.jsonl"
    first = entry.to_json() + "\n"
    path.write_text(first + entry.to_json() + "\n" + '{"d":"torn')
    assert len(read_ledger(path)) == 2
    assert read_ledger(path, upto=len(first)) == [entry]
    assert read_ledger(path, upto=len(first) + 5) == [entry]


def test_a_city_is_never_given_a_database_holding_another_citys_data(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # The last run served Tashkent alone: its data is in the database `safecity`.
    instance.record_cities(instance.layout(home), ["tashkent"])
    argv = ("run", "--api-port", "0", "--mqtt-port", "0", "--influx-port", "0")
    switched = safecity(home, *argv, "--cities", "samarkand")
    assert switched.returncode != 0
    assert "database 'safecity' holds tashkent's data, not samarkand's" in switched.stderr
    assert "own SAFECITY_HOME" in switched.stderr
    assert not (home / "mosquitto").exists()  # refused before anything started
