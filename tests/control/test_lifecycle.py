"""Device and certificate lifecycle beside a running city, from outside: `safecity run` and
the commands a user types beside it as subprocesses, a real broker, real MQTT clients.

- with mutual TLS every simulated device connects to the TLS listener with its own
  certificate, and its readings arrive;
- a revoked device certificate stays revoked across a restart with mutual TLS and
  `certs provision`;
- `devices rotate` and `reinstate` of a simulated device: it publishes again within a
  minute; while refused, the simulator counts it;
- `certs init --host other.example` beside the run leaves its TLS listener working.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from localrun import (
    Run,
    acked_since,
    every_device_has_a_latest_reading,
    local_run,
    progress_lines,
    safecity,
)
from support import wait_for

from broker import certs
from safecity import topics
from safecity.registry import Device, default_city

CITY = default_city()
DEVICE = CITY.select(kind="noise")[0]
OTHER = CITY.select(kind="noise")[1]
# A progress line a second (10 s by default), so a wait on `devices_refused` ends within
# a second of the simulator counting the refusal.
PROGRESS = {"SAFECITY_PROGRESS_INTERVAL": "1"}


def _pub(
    run: Run, *auth: str, host: str = "127.0.0.1", device: Device = DEVICE
) -> subprocess.CompletedProcess[str]:
    """One QoS 1 publish on the device's topic with mosquitto_pub to the run's TLS
    listener (broker certificate and host name verified)."""
    topic = topics.telemetry_topic(CITY.id, device.district, device.kind, device.id)
    assert run.state.mqtt_tls_port is not None
    return subprocess.run(
        ["mosquitto_pub", "-h", host, "-p", str(run.state.mqtt_tls_port),
         "--cafile", str(run.layout.certs_dir / "ca.crt"), "-V", "mqttv5", "-q", "1",
         *auth, "-t", topic, "-m", "lifecycle test"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def _cert(directory: Path, device_id: str) -> tuple[str, ...]:
    """mosquitto_pub's options to log in as the device with its certificate from directory
    (the broker pins a device to its own client id)."""
    cert, key = directory / f"{device_id}.crt", directory / f"{device_id}.key"
    return ("--cert", str(cert), "--key", str(key), "-i", device_id)


def _refused_counted(run: Run) -> bool:
    lines = progress_lines(run)
    return bool(lines) and int(str(lines[-1].get("devices_refused", 0))) >= 1


def _every_device_over_mutual_tls(run: Run) -> None:
    """SAFECITY_DEVICE_TLS=mtls: every simulated device connects to the TLS listener with
    its own certificate, and its readings arrive."""
    printed = run.printed
    assert "devices over   mutual TLS" in printed, printed
    api = re.search(r"console \+ API\s+(http://\S+?)/\s", printed)
    key = re.search(r"SAFECITY_API_KEY=(\S+)", printed)
    tls = re.search(r"MQTT over TLS\s+mqtts://([\d.]+):(\d+)", printed)
    assert api and key and tls, printed
    clients = run.home / "certs" / "clients"
    assert {p.stem for p in clients.glob("*.crt")} >= {d.id for d in CITY.devices}
    assert (run.home / "certs" / "crl.pem").exists()

    every_device_has_a_latest_reading(api.group(1), key.group(1), CITY, 90)
    # Every device came in on the TLS listener, none on the plain one.
    broker_log = (run.home / "mosquitto" / "mosquitto.log").read_text()
    on_tls = len(re.findall(rf"New connection from \S+ on port {tls.group(2)}\.", broker_log))
    assert on_tls >= len(CITY.devices)
    victim = CITY.devices[0].id
    assert re.search(rf" as {re.escape(victim)} \(p5, [^)]*u'{re.escape(victim)}'\)", broker_log)


@pytest.mark.timeout(480)  # two starts of the whole stack, on a busy machine
def test_a_revoked_certificate_stays_revoked_across_restart_and_provision(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    clients = home / "certs" / "clients"
    kept = tmp_path / "kept"
    with local_run(home, SAFECITY_DEVICE_TLS="mtls", **PROGRESS) as run:
        _every_device_over_mutual_tls(run)
        assert (clients / f"{DEVICE.id}.crt").exists()
        kept.mkdir()
        for suffix in (".crt", ".key"):
            shutil.copy(clients / f"{DEVICE.id}{suffix}", kept / f"{DEVICE.id}{suffix}")
        revoked = safecity(home, "certs", "revoke", DEVICE.id)
        assert revoked.returncode == 0, revoked.stderr
        assert "reloaded with SIGHUP" in revoked.stderr
        assert not (clients / f"{DEVICE.id}.crt").exists()
    assert run.process.returncode == 0, "Ctrl-C must stop the run cleanly"

    with local_run(home, SAFECITY_DEVICE_TLS="mtls", **PROGRESS) as run:
        # The restart with mutual TLS issued it nothing, and neither does provision.
        assert not (clients / f"{DEVICE.id}.crt").exists()
        provision = safecity(home, "certs", "provision")
        assert provision.returncode == 0, provision.stderr
        assert "1 revoked device(s) skipped" in provision.stdout, provision.stdout
        assert DEVICE.id in provision.stderr
        assert not (clients / f"{DEVICE.id}.crt").exists()
        assert (clients / f"{OTHER.id}.crt").exists()
        # The broker refuses the revoked certificate and takes a good one.
        assert _pub(run, *_cert(kept, DEVICE.id)).returncode != 0
        ok = _pub(run, *_cert(clients, OTHER.id), device=OTHER)
        assert ok.returncode == 0, ok.stderr
        # The simulated device stays refused, and the simulator says so.
        wait_for(lambda: _refused_counted(run), 60, "devices_refused in the progress line")


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """A city at speed 10 (a reading per device every few seconds), devices on plain MQTT
    with passwords, the TLS listener open beside it."""
    home = tmp_path_factory.mktemp("lifecycle") / "home"
    with local_run(home, "--speed", "10", **PROGRESS) as run:
        yield run


def _secret(run: Run, name: str) -> str | None:
    secrets: dict[str, str] = json.loads(run.layout.secrets_file.read_text(encoding="utf-8"))
    return secrets.get(name)


def test_rotate_revoke_reinstate_a_simulated_device_beside_the_run(plain_run: Run) -> None:
    run = plain_run
    ledger = run.layout.ledger_file
    wait_for(lambda: ledger.exists() and acked_since(run, 0, DEVICE.id), 60, "a first reading")
    before = _secret(run, DEVICE.id)

    offset = ledger.stat().st_size
    rotated = safecity(run.home, "devices", "rotate", DEVICE.id)
    assert rotated.returncode == 0, rotated.stderr
    assert "applied to the broker" in rotated.stderr
    assert _secret(run, DEVICE.id) not in (None, before)
    wait_for(lambda: acked_since(run, offset, DEVICE.id), 60, "a reading after rotate")

    revoked = safecity(run.home, "devices", "revoke", DEVICE.id)
    assert revoked.returncode == 0, revoked.stderr
    assert _secret(run, DEVICE.id) is None
    wait_for(lambda: _refused_counted(run), 60, "devices_refused in the progress line")

    offset = ledger.stat().st_size
    reinstated = safecity(run.home, "devices", "reinstate", DEVICE.id)
    assert reinstated.returncode == 0, reinstated.stderr
    assert _secret(run, DEVICE.id) is not None
    wait_for(lambda: acked_since(run, offset, DEVICE.id), 60, "a reading after reinstate")
    wait_for(lambda: not _refused_counted(run), 30, "devices_refused back to 0")


def _names(path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in sans.get_values_for_type(x509.DNSName)} | {
        str(v) for v in sans.get_values_for_type(x509.IPAddress)
    }


def test_certs_init_beside_the_run_leaves_its_tls_listener_working(plain_run: Run) -> None:
    run = plain_run
    server = run.layout.certs_dir / "server.crt"
    before = server.read_bytes()
    refused = safecity(run.home, "certs", "init", "--host", "other.example")
    assert refused.returncode != 0
    assert "--reissue-server" in refused.stderr and "left unchanged" in refused.stderr
    assert server.read_bytes() == before

    reissued = safecity(run.home, "certs", "init", "--host", "other.example", "--reissue-server")
    assert reissued.returncode == 0, reissued.stderr
    assert _names(server) >= {"other.example", "127.0.0.1", "localhost", "::1"}
    # What any `certs revoke`/`rotate` does: the broker re-reads its certificates.
    pid = int((run.home / "mosquitto" / "mosquitto.pid").read_text().strip())
    os.kill(pid, signal.SIGHUP)
    auth = ("-u", "_simulator", "-P", _secret(run, "_simulator") or "", "-i", "lifecycle-test")

    def handshake_and_connect() -> bool:
        return all(_pub(run, *auth, host=h).returncode == 0 for h in ("127.0.0.1", "localhost"))

    wait_for(handshake_and_connect, 20, "TLS handshake + MQTT CONNECT on 127.0.0.1/localhost")
    assert certs.server_is_good(run.layout.certs_dir, certs.DEFAULT_HOSTS)
