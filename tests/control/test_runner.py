"""`safecity run` (what `make run` starts): the stack comes up, serves data, stops clean."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from localrun import beside, every_device_has_a_latest_reading, launch, until_ready
from support import wait_for

from control.stack import mqtt_connack_reason
from safecity import topics
from safecity.errors import MqttError
from safecity.mqtt import MqttClient
from safecity.readings import format_ts
from safecity.registry import City, default_city
from safecity.settings import MqttSettings

NOT_AUTHORIZED = 0x87


async def _connect(settings: MqttSettings) -> None:
    client = MqttClient(settings, "test-run-tls")
    try:
        await client.connect()
    finally:
        await client.disconnect()


def _children_of(pid: int) -> set[int]:
    """All descendants of pid, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _checkout_var() -> set[Path]:
    """Everything under the checkout's var/ (the launcher's children run in the checkout)."""
    var = Path(__file__).resolve().parents[2] / "var"
    return set(var.rglob("*")) if var.exists() else set()


def _first_notification(
    proc: subprocess.Popen[str], broker: tuple[str, int], issued: dict[str, str]
) -> str:
    """A panic button pressed: with no setting at all, the run prints the page it caused."""
    city = default_city()
    device = city.select(kind="panic_button")[0]
    topic = topics.event_topic(city.id, device.district, device.kind, device.id)
    event = {"ts": format_ts(datetime.now(UTC)), "seq": 10**9, "type": "panic",
             "severity": "critical", "details": {"button": "b1"}}  # fmt: skip
    subprocess.run(
        ["mosquitto_pub", "-h", broker[0], "-p", str(broker[1]), "-u", device.id,
         "-P", issued[device.id], "-i", device.id, "-V", "mqttv5", "-q", "1", "-t", topic,
         "-m", json.dumps(event)],
        check=True, timeout=30,
    )  # fmt: skip
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        if line.startswith("NOTIFICATION to duty-officer: [CRITICAL] panic in"):
            return "".join(seen)
    raise AssertionError("no notification printed:\n" + "".join(seen))


def _broker_refuses_strangers(printed: str, home: Path) -> tuple[tuple[str, int], dict[str, str]]:
    """The broker of `make run` admits no anonymous client, on either listener; the
    secrets are the instance's, 0600. Returns the plain listener and the issued secrets."""
    mqtt = re.search(r"MQTT broker\s+mqtt://([\d.]+):(\d+)", printed)
    tls = re.search(r"MQTT over TLS\s+mqtts://([\d.]+):(\d+)\s+\(CA (\S+)\)", printed)
    secrets_file = re.search(r"MQTT secrets\s+(\S+)", printed)
    assert mqtt and tls and secrets_file, printed
    host, port = mqtt.group(1), int(mqtt.group(2))
    assert mqtt_connack_reason(host, port, 5) == NOT_AUTHORIZED
    secrets_path = Path(secrets_file.group(1))
    assert secrets_path == home / "identity" / "secrets.json"
    for path in (home / "identity").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    issued: dict[str, str] = json.loads(secrets_path.read_text())
    assert {"_ingest", "_api", "_alerts", "_notify", "_simulator"} <= set(issued)
    tls_settings = MqttSettings(
        host=tls.group(1), port=int(tls.group(2)), tls_ca=Path(tls.group(3)), connect_timeout=5
    )
    with pytest.raises(MqttError, match="Not authorized"):
        asyncio.run(_connect(tls_settings))
    as_api = {**tls_settings.model_dump(), "username": "_api", "password": issued["_api"]}
    asyncio.run(_connect(MqttSettings(**as_api)))
    return (host, port), issued


def _revoke_cuts_off_one_device(
    home: Path, broker: tuple[str, int], issued: dict[str, str], city: City
) -> None:
    """`safecity devices revoke` in the run's instance (SAFECITY_HOME, nothing else)
    changes the running broker at once: the device is cut off, everyone else stays."""
    host, port = broker
    victim, other = city.devices[0].id, city.devices[1].id
    revoke = subprocess.run(
        [sys.executable, "-m", "control", "devices", "revoke", victim,
         "--secrets-file", str(home / "identity" / "secrets.json")],
        env=beside(home), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert revoke.returncode == 0, revoke.stderr
    assert "applied to the broker at" in revoke.stderr
    wait_for(
        lambda: (
            mqtt_connack_reason(
                host, port, 5, username=victim, password=issued[victim], client_id=victim
            )
            == NOT_AUTHORIZED
        ),
        30,
        "the revoked device refused at CONNECT",
    )
    reason = mqtt_connack_reason(
        host, port, 5, username=other, password=issued[other], client_id=other
    )
    assert reason == 0


def _no_secret_in_any_output(home: Path, printed: str, issued: dict[str, str]) -> None:
    """No secret in any log or console output of the run."""
    logs = {p: p.read_text(errors="replace") for p in home.rglob("*.log")}
    logs[home / "<stdout>"] = printed
    assert len(logs) >= 6
    for path, text in logs.items():
        leaked = [name for name, secret in issued.items() if secret in text]
        assert leaked == [], f"secrets of {leaked[:5]} in {path}"


def test_run_serves_every_device_then_ctrl_c_leaves_nothing_behind(tmp_path: Path) -> None:
    before = _checkout_var()
    proc = launch(tmp_path, "--data-dir", str(tmp_path), SAFECITY_MQTT_TLS_PORT="0")
    try:
        printed = until_ready(proc)
        api_at = re.search(r"console \+ API\s+(http://\S+?)/\s", printed)
        key_at = re.search(r"SAFECITY_API_KEY=(\S+)", printed)
        assert api_at and key_at, "no console URL or API key printed:\n" + printed
        api, key = api_at.group(1), key_at.group(1)
        assert key.startswith("sck_"), printed
        children = _children_of(proc.pid)
        assert len(children) >= 7  # mosquitto, influxd, ingest, api, notify, alerts, simulator
        alerts = re.search(r"alerts metrics\s+(http://\S+?)/metrics", printed)
        assert alerts, printed
        assert httpx.get(f"{alerts.group(1)}/readyz", timeout=5).status_code == 200
        broker, issued = _broker_refuses_strangers(printed, tmp_path)

        city = default_city()
        every_device_has_a_latest_reading(api, key, city, 120)
        # Every device logged in as itself: the broker log names each device's own client.
        broker_log = (tmp_path / "mosquitto" / "mosquitto.log").read_text()
        victim = city.devices[0].id
        assert re.search(
            rf" as {re.escape(victim)} \(p5, [^)]*u'{re.escape(victim)}'\)", broker_log
        )
        _revoke_cuts_off_one_device(tmp_path, broker, issued, city)
        printed += _first_notification(proc, broker, issued)

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        left = [pid for pid in children if _alive(pid)]
        assert left == [], f"processes left behind: {left}"
        _no_secret_in_any_output(
            tmp_path, printed + (proc.stdout.read() if proc.stdout else ""), issued
        )
        # Everything of the run stayed in its instance: nothing new in the checkout's var/
        # (its ingest used to leave var/spool/ingest-0 there for the next run to replay).
        assert _checkout_var() - before == set()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _rate_limited_after(printed: str, burst: int) -> None:
    """The run's API refuses the request after `burst` quick ones with 429 + Retry-After."""
    api_at = re.search(r"console \+ API\s+(http://\S+?)/\s", printed)
    key_at = re.search(r"SAFECITY_API_KEY=(\S+)", printed)
    assert api_at and key_at, printed
    with httpx.Client(base_url=api_at.group(1), headers={"X-API-Key": key_at.group(1)}) as c:
        codes = [c.get("/v1/cities").status_code for _ in range(burst + 1)]
        assert codes == [200] * burst + [429], codes
        assert int(c.get("/v1/cities").headers["Retry-After"]) >= 1


def test_a_killed_launcher_takes_its_stack_with_it(tmp_path: Path) -> None:
    """Also: the run's API takes its per-key rate limit from `safecity run`'s flags."""
    limits = ("--api-rate-limit-rps", "0.01", "--api-rate-limit-burst", "3")
    proc = launch(tmp_path, "--data-dir", str(tmp_path), *limits)
    try:
        printed = until_ready(proc)
        assert "Press Ctrl-C" in printed
        _rate_limited_after(printed, 3)
        children = _children_of(proc.pid)
        assert len(children) >= 5
    finally:
        proc.kill()  # SIGKILL: no handler, no atexit hook runs in the launcher
        proc.wait()
    wait_for(
        lambda: not any(_alive(pid) for pid in children),
        30,
        "every child of the killed launcher gone",
        interval=0.2,
    )


def test_each_run_revokes_the_key_the_previous_run_printed(tmp_path: Path) -> None:
    from api.apikeys import KeyStore
    from control.runner import LOCAL_KEY_NAME, LocalRun
    from control.settings import StackSettings

    run = LocalRun(StackSettings(data_dir=tmp_path / "home"))
    first, second = run._local_api_key(), run._local_api_key()
    store = KeyStore(run.layout.api_keys_file)
    store.load()
    assert store.verify(first) is None and store.verify(second) is not None
    mine = [r for r in store.records() if r.name == LOCAL_KEY_NAME]
    assert [r.active for r in mine] == [False, True]


def test_spreading_the_fleet_needs_one_city(tmp_path: Path) -> None:
    from control.runner import LocalRun
    from control.settings import StackSettings
    from safecity.errors import StackError

    settings = StackSettings(
        data_dir=tmp_path, cities=("tashkent", "samarkand"), simulator_processes=2
    )
    with pytest.raises(StackError, match="simulator_processes=2 spreads one city"):
        LocalRun(settings)
