"""Backup and restore of an instance, from outside: `safecity run` of the simulated city,
`safecity backup` beside it while it runs, the instance destroyed, `safecity restore` into
a new SAFECITY_HOME and `safecity run` there. All are subprocesses against a real broker
and InfluxDB; the checks are what an operator would see:

- `safecity verify` against the ledger as the backup cut it (its recovery point): lost 0;
- the API key made before the backup works on the restored API; the same incidents listed;
- work acknowledged but not yet out when the backup ran (the broker stopped meanwhile): a
  queued command and a pending incident step come back and go out from the restored city;
- the devices reconnect with their old credentials (the restored city comes online; a
  device's old password is accepted by the restored broker, a wrong one refused);
- a tampered, a truncated and an added file are refused, naming the file, before any
  change; a non-empty instance is kept unless --force.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from localrun import Run, local_run, safecity
from support import mosquitto, wait_for

from control.backup import excluded
from control.backupset import FILES_DIR, MANIFEST
from control.restore import restore
from control.settings import BackupSettings
from safecity import instance, topics
from safecity.errors import BackupError
from safecity.outbox import DeliveryStatus, Outbox
from safecity.registry import Device, default_city

CITY = default_city()
DEVICE = CITY.select(kind="noise")[0]
BUTTON = CITY.select(kind="panic_button")[0]
LIGHT = CITY.select(kind="streetlight")[0]


def _key(run: Run, name: str = "kept", scopes: str = "read") -> str:
    made = safecity(run.home, "apikey", "create", "--name", name, "--scopes", scopes)
    assert made.returncode == 0, made.stderr
    match = re.search(r"SAFECITY_API_KEY=(\S+)", made.stdout)
    assert match, made.stdout
    return match.group(1)


def _incidents(run: Run, key: str) -> dict[str, str]:
    got = httpx.get(
        f"{run.state.api_url}/v1/incidents",
        params={"limit": "500"},
        headers={"X-API-Key": key},
        timeout=30,
    )
    assert got.status_code == 200, got.text
    return {i["id"]: f"{i['rule_id']} {i['place']} {i['opened_at']}" for i in got.json()["items"]}


def _publish(run: Run, device: Device, secret: str, topic: str, body: dict[str, Any]) -> int:
    """One QoS 1 message as `device` (its own client id) with mosquitto_pub; its exit code."""
    payload = json.dumps({"ts": int(time.time() * 1000), "seq": 10**9, **body})
    return subprocess.run(
        [*mosquitto("mosquitto_pub", run.state, device.id, secret=secret, client_id=device.id),
         "-q", "1", "-t", topic, "-m", payload],
        capture_output=True, text=True, timeout=30,
    ).returncode  # fmt: skip


def _press(run: Run) -> None:
    """A panic button pressed (a critical event: an incident opens at once)."""
    secret = json.loads(run.layout.secrets_file.read_text())[BUTTON.id]
    topic = topics.event_topic(CITY.id, BUTTON.district, BUTTON.kind, BUTTON.id)
    body = {"type": "panic", "severity": "critical", "details": {"button": "b1"}}
    assert _publish(run, BUTTON, secret, topic, body) == 0


def _reading(run: Run, secret: str) -> int:
    """A noise reading as DEVICE with `secret`: mosquitto_pub's exit code."""
    topic = topics.telemetry_topic(CITY.id, DEVICE.district, DEVICE.kind, DEVICE.id)
    return _publish(run, DEVICE, secret, topic, {"values": {"laeq": 55.0}})


def _lose(run: Run) -> None:
    """The machine is lost: the launcher killed (its children follow), then its files."""
    run.process.kill()
    run.process.wait(timeout=30)
    ports = [run.state.mqtt_port, int(run.state.influx_url.rsplit(":", 1)[1])]
    wait_for(lambda: not any(_listening(p) for p in ports), timeout=30, what="the stack gone")
    shutil.rmtree(run.home)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _refused(backup: Path, home: Path, named: str) -> None:
    """`safecity restore` of `backup` fails with exit 2 naming `named`, and leaves `home` as
    it was."""
    before = sorted(p.name for p in home.iterdir()) if home.exists() else []
    done = safecity(home, "restore", str(backup))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert named in done.stderr, done.stderr
    after = sorted(p.name for p in home.iterdir()) if home.exists() else []
    assert after == before


def _queue_work(run: Run, operator: str, incidents: dict[str, str]) -> tuple[str, str, str]:
    """With the broker stopped (SIGSTOP), a command and an incident step are acknowledged
    (202, 200) but cannot go out: both wait in their outboxes. The command's id, the
    incident's, and the broker's pid (to continue it)."""
    pid = run.layout.broker_pidfile.read_text().strip()
    os.kill(int(pid), signal.SIGSTOP)
    headers, url = {"X-API-Key": operator}, run.state.api_url
    sent = httpx.post(f"{url}/v1/devices/{LIGHT.id}/commands", headers=headers,
                      json={"name": "set_level", "params": {"level": 40}, "expires_in": 3600},
                      timeout=30)  # fmt: skip
    assert sent.status_code == 202, sent.text
    for incident_id in incidents:  # the first still open (the city may have resolved one)
        acked = httpx.post(f"{url}/v1/incidents/{incident_id}/ack", headers=headers,
                           json={"note": "on my way"}, timeout=30)  # fmt: skip
        if acked.status_code == 200:
            return str(sent.json()["id"]), incident_id, pid
        assert acked.status_code == 409, acked.text
    raise AssertionError(f"no incident to acknowledge among {incidents}")


def _outbox_entries(where: instance.Layout, group: str) -> dict[str, list[DeliveryStatus]]:
    """The statuses of a command's and an incident's entries in the instance's outboxes."""
    commands = where.commands_file.with_name(where.commands_file.stem + ".outbox.sqlite3")
    out = {}
    for name, path in (("command", commands), ("step", where.steps_outbox_file)):
        box = Outbox(path, owner="test-reader")
        try:
            out[name] = [e.status for e in box.entries(group=group)]
        finally:
            box.close()
    return out


def _acknowledged_in_ledger(run: Run) -> bool:
    """Whether the fleet's ledger holds a message the broker accepted (PUBACK < 0x80)."""
    path = run.layout.ledger_file
    if not path.exists():
        return False
    # The last line may be half written: only whole lines count.
    lines = path.read_bytes().split(b"\n")[:-1]
    return any(json.loads(line)["p"] < 0x80 for line in lines if line.strip())


def _take_backup(run: Run, target: Path) -> dict[str, Any]:
    done = safecity(run.home, "backup", str(target))
    assert done.returncode == 0, done.stderr
    # Progress on stderr, step by step; the summary on stdout.
    assert "[1/7] ledger" in done.stderr and "[7/7] manifest" in done.stderr, done.stderr
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


@pytest.mark.timeout(420)
def test_a_city_backed_up_while_running_comes_back_whole_elsewhere(tmp_path: Path) -> None:
    old_home, new_home, backup = tmp_path / "old", tmp_path / "new", tmp_path / "backup"
    with local_run(old_home, "--speed", "10") as run:
        key, operator = _key(run), _key(run, "operator", "read,operate")
        # The fleet's first messages are acknowledged before the broker is stopped and the
        # backup cuts the ledger: on a loaded machine 300 devices take seconds to connect,
        # and a backup of an empty ledger would leave `verify` nothing to check.
        wait_for(lambda: _acknowledged_in_ledger(run), 60, "acknowledged messages in the ledger")
        _press(run)
        wait_for(lambda: _incidents(run, key), timeout=60, interval=1, what="an incident opened")
        incidents = _incidents(run, key)
        command_id, incident_id, broker = _queue_work(run, operator, incidents)
        every_file = [p.relative_to(old_home) for p in old_home.rglob("*") if p.is_file()]
        summary = _take_backup(run, backup)
        os.kill(int(broker), signal.SIGCONT)
        secret = json.loads(run.layout.secrets_file.read_text())[DEVICE.id]
        _lose(run)
    manifest = json.loads((backup / MANIFEST).read_text())
    assert manifest["recovery_point"] == summary["recovery_point"]
    assert manifest["databases"] == ["safecity"]
    # Every file the instance held is in the backup, or is one the next start makes anew,
    # or a spool segment the ingest drained meanwhile.
    kept = {e["path"].removeprefix(f"{FILES_DIR}/") for e in manifest["files"]}
    for path in every_file:
        assert path.as_posix() in kept or excluded(path) or path.name.startswith("seg-")

    _check_refusals(backup, tmp_path)
    done = safecity(new_home, "restore", str(backup))
    assert done.returncode == 0, done.stderr
    assert (instance.layout(new_home).secrets_file.stat().st_mode & 0o777) == 0o600
    # The acknowledged work that had not gone out is back, still to go out.
    pending = [DeliveryStatus.PENDING]
    restored = instance.layout(new_home)
    assert _outbox_entries(restored, command_id)["command"] == pending
    assert _outbox_entries(restored, incident_id)["step"] == pending

    with local_run(new_home, "--speed", "10") as run:
        _verified(run, new_home, backup / FILES_DIR / "ledger.jsonl")
        # ... and goes out: the streetlight carries out the command, the broker takes the step.
        wait_for(lambda: _command_status(run, operator, command_id) == "executed", timeout=60,
                 interval=1, what="the queued command executed")  # fmt: skip
        delivered = [DeliveryStatus.DELIVERED]
        wait_for(lambda: _outbox_entries(run.layout, incident_id)["step"] == delivered,
                 timeout=60, interval=1, what="the pending step announced")  # fmt: skip
        me = httpx.get(f"{run.state.api_url}/v1/me", headers={"X-API-Key": key}, timeout=10)
        assert me.status_code == 200 and me.json()["name"] == "kept", me.text
        now = _incidents(run, key)
        assert incidents.items() <= now.items(), (incidents, now)
        assert _reading(run, secret) == 0
        assert _reading(run, secret + "x") != 0


def _verified(run: Run, new_home: Path, ledger: Path) -> None:
    """`safecity verify` of the restored run against the cut ledger: lost 0 up to the point."""

    def verified() -> bool:
        checked = safecity(
            new_home, "verify", "--ledger", str(ledger), "--json",
            "--deadletters", str(run.layout.deadletter_dir),
        )  # fmt: skip
        # Readings sent after the recovery point that InfluxDB's backup still caught
        # count as "unexpected" against the cut ledger; nothing before it may be lost.
        report = json.loads(checked.stdout or "{}")
        last[:] = [report or checked.stderr[-2000:]]
        wrong = ("lost", "duplicated", "value_mismatch", "good_deadlettered")
        return report.get("sent", 0) > 0 and not any(report[k] for k in wrong)

    last: list[Any] = []
    try:
        wait_for(verified, timeout=90, interval=5, what="verify: lost 0 up to the point")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the last report: {last}") from None


def _command_status(run: Run, key: str, command_id: str) -> str:
    got = httpx.get(f"{run.state.api_url}/v1/commands/{command_id}",
                    headers={"X-API-Key": key}, timeout=10)  # fmt: skip
    assert got.status_code == 200, got.text
    return str(got.json()["deliveries"][0]["status"])


def _check_refusals(backup: Path, tmp_path: Path) -> None:
    """Tampered, truncated and added files are refused by name; a non-empty home is kept.

    The command refuses the first (its exit code, its message, nothing touched); the
    others go through the same `restore` in this process (a command's start costs more
    than the check: the acceptance test stays cheap)."""
    fresh = tmp_path / "fresh"
    tampered = tmp_path / "tampered"
    shutil.copytree(backup, tampered)
    keys = tampered / FILES_DIR / "apikeys.json"
    keys.write_text(keys.read_text().replace('"read"', '"admin"'))
    _refused(tampered, fresh, "apikeys.json")
    shutil.rmtree(tampered)

    truncated = tmp_path / "truncated"
    shutil.copytree(backup, truncated)
    biggest = max((p for p in (truncated / "influxdb").iterdir()), key=lambda p: p.stat().st_size)
    with biggest.open("r+b") as handle:
        handle.truncate(biggest.stat().st_size // 2)
    _refused_here(truncated, fresh, biggest.name)
    shutil.rmtree(truncated)

    added = tmp_path / "added"
    shutil.copytree(backup, added)
    (added / FILES_DIR / "apikeys-extra.json").write_text("{}")
    _refused_here(added, fresh, "apikeys-extra.json")
    shutil.rmtree(added)

    # Directories alone (fresh volumes mounted there) are an empty instance; a file is not.
    (fresh / "notes").mkdir(parents=True)
    (fresh / "notes" / "keep.txt").write_text("an operator's file\n")
    _refused_here(backup, fresh, "not empty")
    assert not fresh.joinpath("apikeys.json").exists()


def _refused_here(backup: Path, home: Path, named: str) -> None:
    """`restore` of `backup` raises naming `named` and leaves `home` as it was."""
    before = sorted(p.name for p in home.iterdir()) if home.exists() else []
    with pytest.raises(BackupError, match=re.escape(named)):
        restore(BackupSettings(home=home), backup, lambda _: None)
    after = sorted(p.name for p in home.iterdir()) if home.exists() else []
    assert after == before
