"""Commands end to end against the real broker, InfluxDB and service processes: the API
stores and publishes as the `_command` role, devices (real edge agents, the simulated
fleet) execute and answer, every command ends with a true status per device."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from chromium import chromium_context, sign_in
from commanddevice import CommandDevices
from oidcprovider import CONSOLE_CLIENT, CONSOLE_SECRET, OidcProvider
from support import account_env, holds_for, influx_rows, mosquitto, wait_for

from api.apikeys import ApiKey, KeyStore
from api.commandhop import CALLER_HEADER, SIGNATURE_HEADER, vouch
from api.commanding import CHANNEL, open_outbox
from api.people import SESSION_COOKIE
from api.settings import ApiSettings
from control.stack import LocalStack
from safecity import topics
from safecity.commands import Command, CommandResult, ResultStatus
from safecity.outbox import DeliveryStatus, Message, Outbox
from safecity.registry import Device, default_city

CITY = default_city()
PERSON = {"name": "Dilnoza Karimova", "roles": ["safecity-operator"], "cities": ["tashkent"]}
FINAL = {"executed", "failed", "expired"}


def command_env(stack: LocalStack, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The API's command settings: the `_command` account, a store of the test's own."""
    return {
        "SAFECITY_COMMANDS__PASSWORD": stack.secret("_command"),
        "SAFECITY_COMMANDS_FILE": str(tmp_path / "commands.sqlite3"),
        "SAFECITY_COMMANDS__RETRY": "0.5",
        "SAFECITY_COMMANDS__RESULT_GRACE": "2",
        "SAFECITY_RATE_LIMIT_RPS": "100000",
        "SAFECITY_RATE_LIMIT_BURST": "100000",
        **extra,
    }


@pytest.fixture
def devices(stack: LocalStack, tmp_path: Path) -> Iterator[CommandDevices]:
    kit = CommandDevices(stack, CITY.id, tmp_path / "edge-spool")
    yield kit
    kit.close()


def send(api: Any, device: Device, name: str, **body: Any) -> dict[str, Any]:
    response = httpx.post(
        f"{api.url}/v1/devices/{device.id}/commands",
        json={"name": name, **body},
        headers=api.headers,
        timeout=10,
    )
    assert response.status_code == 202, response.text
    answer: dict[str, Any] = response.json()
    return answer


def status(api: Any, command_id: str) -> dict[str, Any]:
    response = httpx.get(f"{api.url}/v1/commands/{command_id}", headers=api.headers, timeout=10)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def settled(api: Any, command_id: str, timeout: float = 20) -> dict[str, Any]:
    """The command once every device has a final status."""
    found: dict[str, Any] = wait_for(
        lambda: (
            (c := status(api, command_id))
            and all(d["status"] in FINAL for d in c["deliveries"])
            and c
        ),
        timeout,
        f"final statuses of {command_id}",
    )
    return found


def end_session(stack: LocalStack, device: Device) -> None:
    """Log in as the device with a clean start and leave: the broker then holds no session
    for it (a simulator of the whole city that another test ran on this broker left one,
    whose subscription would take the device's commands while it is away)."""
    topic = topics.command_topic(CITY.id, device.district, device.kind, device.id)
    login = mosquitto("mosquitto_sub", stack, device.id, client_id=device.id)
    result = subprocess.run(
        [*login, "-q", "1", "-t", topic, "-E"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


def unsimulated(kind: str, count: int) -> list[Device]:
    """Devices of a kind that no simulator runs in these tests (the registry's last ones)."""
    return [d for d in reversed(CITY.devices) if d.kind == kind][:count]


def test_a_live_device_executes_and_an_away_device_gets_it_when_back(
    stack: LocalStack,
    influx_db: str,
    start_api: Callable[..., Any],
    devices: CommandDevices,
    tmp_path: Path,
) -> None:
    api = start_api(influx_db, **command_env(stack, tmp_path))
    live, away, late = unsimulated("weather", 3)
    for device in (live, away, late):
        devices.start(device)
    done = settled(api, send(api, live, "set_interval", params={"interval_s": 120})["id"])
    assert [(d["device_id"], d["status"]) for d in done["deliveries"]] == [(live.id, "executed")]
    assert devices.executed[(done["id"], live.id)] == 1
    # It went out through the shared durable outbox: one message, taken by the broker.
    box = Outbox(tmp_path / "commands.outbox.sqlite3", owner="test-reader")
    (entry,) = box.entries(group=done["id"])
    assert (entry.key, entry.status, entry.attempts) == (
        f"{done['id']}/{live.id}", DeliveryStatus.DELIVERED, 1,
    )  # fmt: skip
    box.close()

    # Away (its session stays at the broker): delivered when it is back before the expiry.
    devices.stop(away)
    devices.stop(late)
    waiting = send(api, away, "reboot", expires_in=60)
    expiring = send(api, late, "reboot", expires_in=2)
    # Nothing reaches a device that is away: still pending 1.5 s on (the other command
    # expires at 2 s), many times what delivery to a connected device took above.
    holds_for(
        lambda: status(api, waiting["id"])["deliveries"][0]["status"] == "pending",
        1.5,
        "the away device's command pending",
    )
    # Past its expiry nobody got it: expired, and the broker dropped it from the session.
    expired = settled(api, expiring["id"])
    assert expired["deliveries"][0]["status"] == "expired"
    assert expired["deliveries"][0]["reason"] == "not delivered before its expiry"
    devices.start(away)
    devices.start(late)
    back = settled(api, waiting["id"])
    assert back["deliveries"][0]["status"] == "executed"
    # The broker drops it (its expiry clock has whole seconds: a copy may still slip out
    # in the second after, so a second is the bound), and the device never carries out
    # what arrived too late.
    holds_for(
        lambda: devices.executed[(expiring["id"], late.id)] == 0,
        1.0,
        "the expired command not carried out",
    )
    assert status(api, expiring["id"])["deliveries"][0]["status"] == "expired"


def test_a_device_that_never_connects_costs_a_bounded_number_of_attempts(
    stack: LocalStack, influx_db: str, start_api: Callable[..., Any], tmp_path: Path
) -> None:
    """No session at the broker, a long expiry: the tries stop at the cap, the status is
    failed with the reason, and no further attempt row is added."""
    env = command_env(stack, tmp_path, SAFECITY_COMMANDS__RETRY_MAX="0.2",
                      SAFECITY_COMMANDS__MAX_TRIES="4")  # fmt: skip
    api = start_api(influx_db, **{**env, "SAFECITY_COMMANDS__RETRY": "0.05"})
    never = unsimulated("weather", 4)[3]  # one the other tests never start
    end_session(stack, never)
    sent = send(api, never, "reboot", expires_in=3600)
    done = settled(api, sent["id"])
    (delivery,) = done["deliveries"]
    assert delivery["status"] == "failed"
    assert delivery["reason"].startswith("no session at the broker after 4 tries")
    box = Outbox(tmp_path / "commands.outbox.sqlite3", owner="test-reader")
    try:
        (entry,) = box.entries(group=sent["id"])
        assert (entry.status, entry.attempts) == (DeliveryStatus.FAILED, 4)
        # Ten times the longest wait on: still four attempt rows.
        holds_for(lambda: len(box.attempts(entry.key)) == 4, 2.0, "four attempts, no more")
    finally:
        box.close()


def test_a_replica_without_the_command_service_passes_the_command_routes_to_its_owner(
    stack: LocalStack,
    influx_db: str,
    start_api: Callable[..., Any],
    devices: CommandDevices,
    tmp_path: Path,
) -> None:
    """Two API processes as on Kubernetes: the owner (store, broker session) and a replica
    with `SAFECITY_COMMANDS__URL`, each with its own sessions file, sharing the key file and
    the command hop key. Every command route asked of the replica is the owner's answer,
    for a key and for a person signed in on the replica's console alike (the owner knows
    neither the session nor the identity provider: it believes the replica's signed word
    and names the person); the replica opens no store, and without its owner says so (503)."""
    keys = str(tmp_path / "shared-keys.json")
    hop = {"SAFECITY_COMMAND_HOP_KEY_FILE": str(tmp_path / "hop" / "command-hop.key")}
    owner_sessions = str(tmp_path / "owner-sessions.sqlite3")
    owner = start_api(influx_db, **command_env(stack, tmp_path), SAFECITY_API_KEYS_FILE=keys,
                      SAFECITY_SESSIONS_FILE=owner_sessions, **hop)  # fmt: skip
    (tmp_path / "oidc").mkdir()
    provider = OidcProvider(tmp_path / "oidc", {"ops-tashkent": PERSON}, [])
    replica_file = tmp_path / "replica-commands.sqlite3"
    replica = start_api(influx_db, SAFECITY_API_KEYS_FILE=keys, SAFECITY_COMMANDS__URL=owner.url,
                        SAFECITY_COMMANDS_FILE=str(replica_file), **hop,
                        SAFECITY_SESSIONS_FILE=str(tmp_path / "replica-sessions.sqlite3"),
                        **provider_env(provider))  # fmt: skip
    replica.api_key = owner.api_key  # a key both processes know (the owner's)
    device = unsimulated("weather", 5)[4]
    devices.start(device)
    sent = send(replica, device, "set_interval", params={"interval_s": 90})
    done = settled(replica, sent["id"])
    assert [(d["device_id"], d["status"]) for d in done["deliveries"]] == [(device.id, "executed")]
    assert status(owner, sent["id"]) == done
    listed = httpx.get(f"{replica.url}/v1/commands", headers=owner.headers, timeout=10)
    assert listed.status_code == 200 and sent["id"] in listed.text
    body = {"name": "set_interval", "params": {"interval_s": -1}}
    bad = httpx.post(f"{replica.url}/v1/devices/{device.id}/commands", headers=owner.headers,
                     json=body, timeout=10)  # fmt: skip
    assert bad.status_code == 422 and "interval_s" in bad.text
    unknown = httpx.get(f"{replica.url}/v1/commands/cmd-{'0' * 20}", headers=owner.headers,
                        timeout=10)  # fmt: skip
    assert unknown.status_code == 404
    _a_signed_in_person_commands_through_the_replica(owner, replica, provider, device, tmp_path)
    _vouched_callers_the_owner_refuses(owner, replica, Path(hop["SAFECITY_COMMAND_HOP_KEY_FILE"]))
    assert not replica_file.exists()
    owner.stop()
    gone = httpx.get(f"{replica.url}/v1/commands", headers=owner.headers, timeout=10)
    assert gone.status_code == 503 and "command service" in gone.text
    # Everything else is the replica's own.
    own = httpx.get(f"{replica.url}/v1/cities", headers=owner.headers, timeout=10)
    assert own.status_code == 200


def provider_env(provider: OidcProvider) -> dict[str, str]:
    """An API's settings for signing people in with `provider` on its console."""
    return {
        "SAFECITY_OIDC__ISSUER": provider.issuer,
        "SAFECITY_OIDC__CLIENT_ID": CONSOLE_CLIENT,
        "SAFECITY_OIDC__CLIENT_SECRET": CONSOLE_SECRET,
        "SAFECITY_OIDC__SCOPES": "openid profile safecity",
    }


def _console_session(replica: Any, provider: OidcProvider, tmp_path: Path) -> dict[str, str]:
    """The headers of a console signed in on `replica` through the provider's login form
    (Chromium): the session cookie and its CSRF token."""
    provider.redirect_uris = [f"{replica.url}/auth/callback"]
    provider.start()
    try:
        with chromium_context(tmp_path / "profile", width=1280, height=900,
                              timeout_ms=20_000) as browser:  # fmt: skip
            page = browser.pages[0] if browser.pages else browser.new_page()
            sign_in(page, replica.url, "ops-tashkent")
            (cookie,) = [c for c in browser.cookies(replica.url) if c["name"] == SESSION_COOKIE]
    finally:
        provider.stop()
    jar = {"Cookie": f"{SESSION_COOKIE}={cookie['value']}"}
    session = httpx.get(f"{replica.url}/auth/session", headers=jar, timeout=10).json()
    assert session["signed_in"] and session["subject"] == "ops-tashkent", session
    return {**jar, "X-CSRF-Token": session["csrf_token"]}


def _audit(api: Any) -> list[dict[str, Any]]:
    text = Path(api.env["SAFECITY_AUDIT_LOG_FILE"]).read_text()
    return [json.loads(line) for line in text.splitlines()]


def _a_signed_in_person_commands_through_the_replica(
    owner: Any, replica: Any, provider: OidcProvider, device: Device, tmp_path: Path
) -> None:
    console = _console_session(replica, provider, tmp_path)
    url = f"{replica.url}/v1/devices/{device.id}/commands"
    # Without the session's CSRF token the replica itself refuses (and audits it).
    forged = httpx.post(url, headers={"Cookie": console["Cookie"]}, json={"name": "reboot"},
                        timeout=10)  # fmt: skip
    assert forged.status_code == 403 and "CSRF" in forged.json()["detail"]
    sent = httpx.post(url, headers=console, json={"name": "reboot"}, timeout=10)
    assert sent.status_code == 202, sent.text
    command = sent.json()
    assert (command["by_subject"], command["by_name"]) == ("ops-tashkent", "Dilnoza Karimova")
    assert settled(owner, command["id"])["deliveries"][0]["status"] == "executed"
    # The owner's audit log names the person; the replica's holds only its own refusal.
    route = "/v1/devices/{device_id}/commands"
    assert (route, "ops-tashkent", "Dilnoza Karimova", 202) in [
        (a["route"], a["subject"], a["person"], a["status"]) for a in _audit(owner)
    ]
    assert [(a["subject"], a["status"]) for a in _audit(replica)] == [("ops-tashkent", 403)]


def _vouched_callers_the_owner_refuses(owner: Any, replica: Any, key_file: Path) -> None:
    """A caller claimed without the key, too late, a second time, or by a client: refused."""
    path, admin = "/v1/commands", ApiKey("x", "mallory", ("admin",), "", "")
    key = bytes.fromhex(key_file.read_text())

    def ask(api: Any, headers: dict[str, str], target: str = path) -> httpx.Response:
        return httpx.get(f"{api.url}{target}", headers=headers, timeout=10)

    forged = vouch(b"\x01" * 32, "GET", path, "", b"", admin)
    answer = ask(owner, forged)
    assert answer.status_code == 403 and "does not match" in answer.json()["detail"]
    unsigned = ask(owner, {CALLER_HEADER: forged[CALLER_HEADER]})
    assert unsigned.status_code == 401 and SIGNATURE_HEADER in unsigned.json()["detail"]
    old = ask(owner, vouch(key, "GET", path, "", b"", admin, now=time.time() - 120))
    assert old.status_code == 403 and "outside the 30 s window" in old.json()["detail"]
    # Signed for another request (a GET of one command): not for this one.
    other = ask(owner, vouch(key, "GET", f"{path}/cmd-{'0' * 20}", "", b"", admin))
    assert other.status_code == 403 and "does not match" in other.json()["detail"]
    fresh = vouch(key, "GET", path, "", b"", admin)
    assert ask(owner, fresh).status_code == 200
    replayed = ask(owner, fresh)
    assert replayed.status_code == 403 and "already used" in replayed.json()["detail"]
    # From a client, the header is never believed: not on the replica's command routes,
    # nor on its own, not even beside a key it knows.
    for target in (path, "/v1/cities"):
        for extra in ({}, owner.headers):
            sneaked = ask(replica, {**vouch(key, "GET", target, "", b"", admin), **extra}, target)
            assert sneaked.status_code == 401, sneaked.text
            assert "accepted only by the command service" in sneaked.json()["detail"]


def test_refusals_name_what_is_wrong(
    stack: LocalStack, influx_db: str, start_api: Callable[..., Any], tmp_path: Path
) -> None:
    api = start_api(influx_db, **command_env(stack, tmp_path))
    light = next(d for d in CITY.devices if d.kind == "streetlight")
    url = f"{api.url}/v1/devices/{light.id}/commands"

    def post(body: dict[str, Any], target: str = url, **kw: Any) -> httpx.Response:
        return httpx.post(target, json=body, headers=kw.get("headers", api.headers), timeout=10)

    bad = post({"name": "set_level", "params": {"level": 150}})
    assert bad.status_code == 422 and "level" in bad.json()["detail"]
    # A command the catalogue does not know: 422; one it knows, but not for this kind: 404.
    assert post({"name": "self_destruct"}).status_code == 422
    other_kind = post({"name": "goto_preset", "params": {"preset": 1}})
    assert other_kind.status_code == 404 and "unknown command" in other_kind.json()["detail"]
    assert post({"name": "set_level"}).status_code == 422
    assert post({"name": "reboot", "expires_in": 10**9}).status_code == 422
    missing = post({"name": "reboot"}, f"{api.url}/v1/devices/nowhere-001/commands")
    assert missing.status_code == 404
    # A key for another city sees neither the device nor its commands.
    keys = KeyStore(Path(api.env["SAFECITY_API_KEYS_FILE"]))
    _, other = keys.create("other-city", ("operate",), ("samarkand",))
    assert post({"name": "reboot"}, headers={"X-API-Key": other}).status_code == 404
    _, reader = keys.create("reader", ("read",))
    assert post({"name": "reboot"}, headers={"X-API-Key": reader}).status_code == 403
    # Nothing refused was stored.
    listed = httpx.get(f"{api.url}/v1/commands", headers=api.headers, timeout=10).json()
    assert listed["items"] == []
    # The same idempotency key: the same command; reused for another one: 409.
    first = post({"name": "reboot", "idempotency_key": "k-1"})
    again = post({"name": "reboot", "idempotency_key": "k-1"})
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"]
    assert post({"name": "set_interval", "params": {"interval_s": 60}, "idempotency_key": "k-1"}
                ).status_code == 409  # fmt: skip
    audit = Path(api.env["SAFECITY_AUDIT_LOG_FILE"]).read_text()
    assert "/commands" in audit


def test_a_result_for_another_devices_command_is_refused_and_recorded(
    stack: LocalStack,
    influx_db: str,
    start_api: Callable[..., Any],
    devices: CommandDevices,
    tmp_path: Path,
) -> None:
    api = start_api(influx_db, **command_env(stack, tmp_path))
    victim, forger = unsimulated("noise", 2)
    command = send(api, victim, "reboot", expires_in=30)
    # The forger answers on its own result topic (the only one the broker lets it write).
    forged = CommandResult(
        command_id=command["id"], status=ResultStatus.EXECUTED, ts=_now()
    ).to_payload()
    topic = topics.result_topic(CITY.id, forger.district, forger.kind, forger.id)
    subprocess.run(
        [*mosquitto("mosquitto_pub", stack, forger.id, client_id=forger.id),
         "-q", "1", "-t", topic, "-m", forged.decode()],
        check=True, timeout=30,
    )  # fmt: skip
    rows = wait_for(
        lambda: influx_rows(stack, influx_db, 'SELECT * FROM "security"."security_events"'),
        20,
        "the forgery's security event",
    )
    assert rows[0]["type"] == "command_forgery" and rows[0]["source"] == "api"
    assert rows[0]["device_id"] == forger.id
    assert status(api, command["id"])["deliveries"][0]["status"] == "pending"


def _now() -> Any:
    return datetime.now(UTC)


def test_api_kill_9_with_commands_in_flight_sends_none_twice(
    stack: LocalStack,
    influx_db: str,
    start_api: Callable[..., Any],
    devices: CommandDevices,
    tmp_path: Path,
) -> None:
    targets = unsimulated("parking", 12)
    for device in targets:
        devices.start(device)
    env = command_env(stack, tmp_path)
    api = start_api(influx_db, **env)
    sent = [send(api, d, "set_interval", params={"interval_s": 60 + i}) for i, d in
            enumerate(targets) for _ in range(3)]  # fmt: skip
    pid = api.process.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    api.process.stop(timeout=5)
    again = start_api(
        influx_db, **{**env, "SAFECITY_API_KEYS_FILE": api.env["SAFECITY_API_KEYS_FILE"]}
    )
    for command in sent:
        final = settled(again, command["id"])
        assert [d["status"] for d in final["deliveries"]] == ["executed"], final
    # Executed once per device, whatever the broker redelivered after the crash.
    assert {key: n for key, n in devices.executed.items() if n != 1} == {}
    assert len(devices.executed) == len(sent)


def test_a_district_command_reaches_every_streetlight_and_shows_in_telemetry(
    stack: LocalStack,
    influx_db: str,
    start_api: Callable[..., Any],
    start_ingest: Callable[..., Any],
    tmp_path: Path,
) -> None:
    ingest = start_ingest(influx_db)
    api = start_api(influx_db, **command_env(stack, tmp_path))
    district = "chilanzar"
    lights = [d for d in CITY.devices if d.district == district and d.kind == "streetlight"]
    assert lights
    env = {**ingest.env, **account_env(stack, "simulator"), "SAFECITY_CLIENT_ID": "sim-commands",
           "SAFECITY_EDGE__SPOOL_DIR": str(tmp_path / "sim-spool")}  # fmt: skip
    log = (tmp_path / "sim.log").open("wb")
    sim = subprocess.Popen(
        [sys.executable, "-m", "control", "simulate", "--duration", "60"],
        env=env, stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    try:
        _dim_a_district(stack, influx_db, api, district, lights)
    finally:
        sim.send_signal(signal.SIGINT)
        sim.wait(30)
        log.close()


def _dim_a_district(
    stack: LocalStack, influx_db: str, api: Any, district: str, lights: list[Device]
) -> None:
    wait_for(lambda: _online(stack, influx_db) >= len(CITY.devices) // 2, 40, "fleet online")
    response = httpx.post(
        f"{api.url}/v1/cities/{CITY.id}/districts/{district}/commands",
        json={"kind": "streetlight", "name": "set_level", "params": {"level": 40}},
        headers=api.headers,
        timeout=10,
    )
    assert response.status_code == 202, response.text
    done = settled(api, response.json()["id"], 30)
    assert sorted(d["device_id"] for d in done["deliveries"]) == sorted(d.id for d in lights)
    assert {d["status"] for d in done["deliveries"]} == {"executed"}
    assert done["statuses"] == {"executed": len(lights)}
    for light in lights:
        latest = wait_for(
            lambda light=light: (r := _latest(api, light)) and r["values"].get("level") == 40 and r,
            20,
            f"{light.id} reporting level 40",
        )
        assert latest["values"]["power_state"] == "dimmed"


def _online(stack: LocalStack, db: str) -> int:
    rows = influx_rows(stack, db, 'SELECT count("seq") FROM /.*/ GROUP BY "device_id"')
    return len(rows)


def _latest(api: Any, device: Device) -> dict[str, Any] | None:
    response = httpx.get(
        f"{api.url}/v1/devices/{device.id}/latest", headers=api.headers, timeout=10
    )
    if response.status_code != 200:
        return None
    answer: dict[str, Any] = response.json()
    return answer


def test_a_command_queued_by_the_previous_version_is_sent_as_it_was(
    stack: LocalStack, influx_db: str, start_api: Callable[..., Any], tmp_path: Path
) -> None:
    """An outbox entry from before entries carried their bytes (its payload is the wire
    command itself, its body empty) is published with the bytes that version sent."""
    (device,) = unsimulated("noise", 1)
    now = datetime.now(UTC)
    wire = Command(id="cmd-00000000000000000077", name="reboot", params={}, issued_at=now,
                   expires_at=now + timedelta(seconds=60), idempotency_key="upgrade-1")  # fmt: skip
    old_payload = json.loads(wire.to_payload())
    box = open_outbox(ApiSettings(commands_file=tmp_path / "commands.sqlite3"))
    topic = topics.command_topic(CITY.id, device.district, device.kind, device.id)
    old = Message(key=f"{wire.id}/{device.id}", channel=CHANNEL, recipient=topic,
                  payload=old_payload, group=wire.id, expires_at=now.timestamp() + 60)  # fmt: skip
    box.enqueue([old])
    box.close()
    received = subprocess.Popen(
        [*mosquitto("mosquitto_sub", stack, device.id, client_id=device.id),
         "-q", "1", "-t", topic, "-C", "1", "-W", "60"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        start_api(influx_db, **command_env(stack, tmp_path))
        out, _ = received.communicate(timeout=90)
    finally:
        received.kill()
    assert json.loads(out) == old_payload
