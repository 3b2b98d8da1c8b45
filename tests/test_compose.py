"""Compose parity: docker-compose.yml, verified without a Docker engine.

`docker-compose config` (Debian's docker-compose, no daemon needed) validates the file and
resolves it. Then every safecity service of it runs here with its exact command and
environment — container host names mapped to real local Mosquitto and InfluxDB processes,
container paths to temp dirs, listen ports to free ports — and must pass its own compose
health check. The broker runs the config the compose provisioning step renders.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import BaseModel
from support import wait_for

from alerts.settings import AlertsSettings
from api.settings import ApiSettings
from broker import dynsec
from broker.settings import SecuritySettings
from control.settings import BackupSettings, StorageSettings
from control.stack import Influxd, ManagedProcess, free_port
from ingest.settings import IngestSettings
from notify.settings import NotifySettings
from safecity import settings as settings_mod
from safecity.registry import default_city
from simulators.settings import SimulatorSettings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
# What scripts/compose-secrets.sh writes (random there; fixed here).
SECRET_FILES = {
    "influx_admin_password": "compose-admin-'pw",
    "influx_password": "compose-user-pw",
    "grafana_admin_password": "compose-grafana-pw",
    "grafana_webhook_key": "not-a-real-key",
}
# Which settings class each safecity command reads (the env names it understands).
SETTINGS_OF = {
    "ingest": IngestSettings,
    "api": ApiSettings,
    "alerts": AlertsSettings,
    "notify": NotifySettings,
    "simulate": SimulatorSettings,
    "influx": StorageSettings,
    "devices": SecuritySettings,
    "backup": BackupSettings,
}
SAFECITY_IMAGE = "safecity:local"


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` on the repository's file with exactly `env`."""
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose missing: `make test` installs the Debian package"
    return subprocess.run(
        [binary, "-f", str(COMPOSE), "--project-directory", str(ROOT), "config"],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    result = compose_config({})
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def safecity_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in config["services"].items() if s.get("image") == SAFECITY_IMAGE}


def test_passwords_reach_containers_only_as_secret_files(resolved: dict[str, Any]) -> None:
    raw = yaml.safe_load(COMPOSE.read_text())
    declared = raw["secrets"]
    assert set(declared) == set(SECRET_FILES)
    script = (ROOT / "scripts" / "compose-secrets.sh").read_text()
    for name, spec in declared.items():
        assert spec["file"] == f"${{COMPOSE_SECRETS_DIR:-./var/compose/secrets}}/{name}"
        assert name in script, f"scripts/compose-secrets.sh does not make {name}"
    for name, service in resolved["services"].items():
        granted = {s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])}
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|TOKEN|SECRET(?!S_FILE)", key):
                assert key.endswith("_FILE"), f"{name}: {key} holds a secret in the environment"
                if str(value).startswith("/run/secrets/"):
                    assert Path(value).name in granted, f"{name}: {value} is not mounted"


def test_every_service_is_health_checked_and_waits_for_healthy_dependencies(
    resolved: dict[str, Any],
) -> None:
    services = resolved["services"]
    one_shots = {"provision", "influx-init"}
    for name, service in services.items():
        if name in one_shots:
            assert service.get("restart") == "no"
        else:
            assert service["healthcheck"]["test"], name
        for dependency, rule in service.get("depends_on", {}).items():
            wanted = (
                "service_completed_successfully" if dependency in one_shots else "service_healthy"
            )
            assert rule["condition"] == wanted, (name, dependency)
    assert set(services) >= {"mosquitto", "influxdb", "grafana", "ingest", "api", "simulator"}


def test_bind_mounts_exist_and_grafana_finds_its_provisioning(resolved: dict[str, Any]) -> None:
    for name, service in resolved["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("/"):  # a bind mount (named volumes have no slash)
                assert Path(source).exists(), f"{name} mounts missing {source}"
                assert Path(source).resolve().is_relative_to(ROOT), source
    grafana = {
        v.split(":")[1]: Path(v.split(":")[0]) for v in resolved["services"]["grafana"]["volumes"]
    }
    provisioning = grafana["/etc/grafana/provisioning"]
    for folder in ("datasources", "dashboards", "alerting"):
        assert list((provisioning / folder).glob("*.yaml")), folder
    provider = yaml.safe_load((provisioning / "dashboards" / "safecity.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert path in grafana, f"Grafana looks for dashboards in {path}, nothing is mounted there"
    assert list(grafana[path].glob("*.json"))
    datasource = (provisioning / "datasources" / "safecity.yaml").read_text()
    env = resolved["services"]["grafana"]["environment"]
    for variable in re.findall(r"\$\{([A-Z_][A-Z0-9_]*)\}", datasource):
        assert variable in env, f"the datasource expands ${variable}, compose does not set it"
    secrets = resolved["services"]["grafana"].get("secrets", [])
    granted = {s if isinstance(s, str) else s["source"] for s in secrets}
    for path in re.findall(r"\$__file\{([^}]+)\}", datasource):
        assert path.startswith("/run/secrets/") and Path(path).name in granted, path


def _fields(model: type[BaseModel], prefix: str = "SAFECITY_") -> set[str]:
    names = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= _fields(annotation, f"{prefix}{name.upper()}__")
        names.add(f"{prefix}{name.upper()}")
    return names


def _command_of(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return command if isinstance(command, list) else command.split()


def test_every_safecity_variable_is_a_setting_of_that_service(resolved: dict[str, Any]) -> None:
    for name, service in safecity_services(resolved).items():
        command = _command_of(service)
        words = command if command[0] == "safecity" else " ".join(command).split()
        verb = words[words.index("safecity") + 1]
        known = _fields(SETTINGS_OF[verb])
        unknown = sorted(
            v
            for v in service.get("environment", {})
            if v.startswith("SAFECITY_") and v not in known
        )
        assert unknown == [], f"{name}: no such setting {unknown}"


def test_the_scheduled_backup_reads_every_state_volume_and_influxdb(
    resolved: dict[str, Any],
) -> None:
    services = resolved["services"]
    backup = services["backup"]
    assert backup["profiles"] == ["backup"] and backup["build"]["target"] == "backup"
    home = backup["environment"]["SAFECITY_HOME"]
    mounts = {v.split(":")[0]: v.split(":")[1:] for v in backup["volumes"]}
    targets = {source: target for source, (target, *_) in mounts.items()}
    # Every volume a safecity service keeps state in is read inside the home; read-only but
    # the one with SQLite databases (a reader of a live one needs its shared-memory file).
    for name, service in safecity_services(resolved).items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("/"):
                assert source in mounts, f"the backup does not read {source} ({name}'s)"
                target, mode = targets[source], mounts[source][1:]
                wanted = ["rw"] if source == "notify-data" else ["ro"]
                assert target.startswith(f"{home}/") and mode == wanted, (source, target, mode)
    command = " ".join(_command_of(backup))
    assert 'safecity backup "/backups/' in command and mounts["backups"] == ["/backups", "rw"]
    known = _fields(BackupSettings)
    assert [v for v in backup["environment"] if v.startswith("SAFECITY_") and v not in known] == []
    # InfluxDB serves its backup RPC on the compose network, where the setting names it.
    assert services["influxdb"]["environment"]["INFLUXDB_BIND_ADDRESS"] == ":8088"
    assert backup["environment"]["SAFECITY_INFLUX_RPC"] == "influxdb:8088"
    stages = re.findall(r"^FROM (\S+)(?: AS (\S+))?", (ROOT / "Dockerfile").read_text(), re.M)
    assert ("runtime", "backup") in stages and stages[-1] == ("runtime", "")


def test_replica_names_give_stable_distinct_worker_ids() -> None:
    # What SAFECITY_WORKER_ID=auto makes of compose's replica names (v2 DNS and v1 names);
    # the DNS lookup itself needs a Docker network and is not run here.
    assert (
        settings_mod.instance_id_from_name("safecity-ingest-2.safecity_default")
        == "safecity-ingest-2"
    )
    assert settings_mod.instance_id_from_name("safecity_ingest_3") == "safecity-ingest-3"
    assert settings_mod.instance_id_from_name("SafeCity_Ingest_1.net") == "safecity-ingest-1"


class Mapper:
    """Rewrites container paths, host names and ports into this machine's equivalents."""

    def __init__(self, tmp: Path, mqtt_port: int, influx_port: int) -> None:
        self.paths: dict[str, str] = {
            "/etc/safecity/mosquitto.conf": str(ROOT / "broker" / "mosquitto.conf"),
            "/mosquitto/config": str(tmp / "broker-config"),
            "/mosquitto/certs": str(tmp / "broker-certs"),
            "/mosquitto/data": str(tmp / "broker-data"),
            "/run/safecity/secrets": str(tmp / "secrets"),
            "/run/secrets": str(tmp / "run-secrets"),
        }
        self.tmp = tmp
        self.hosts = {"mosquitto": ("127.0.0.1", mqtt_port), "influxdb": ("127.0.0.1", influx_port)}
        self.ports: dict[int, int] = {}
        self.tls_port = free_port()

    def volume_dirs(self, service: dict[str, Any], name: str) -> None:
        """Named volumes of a service become temp dirs (shared by name, like Docker's)."""
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if not source.startswith("/") and target not in self.paths:
                self.paths[target] = str(self.tmp / "volumes" / source)

    def port(self, container_port: int) -> int:
        if container_port not in self.ports:
            self.ports[container_port] = free_port()
        return self.ports[container_port]

    def __call__(self, text: str) -> str:
        for container, local in sorted(self.paths.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(container, local)
        text = re.sub(
            r"http://127\.0\.0\.1:(\d+)",
            lambda m: f"http://127.0.0.1:{self.port(int(m.group(1)))}",
            text,
        )
        # After the loopback ports: this one is already the real local port.
        influx = f"http://127.0.0.1:{self.hosts['influxdb'][1]}"
        return text.replace("http://influxdb:8086", influx)

    def env(self, environment: dict[str, Any]) -> dict[str, str]:
        out = {k: v for k, v in os.environ.items() if not k.startswith("SAFECITY_")}
        tls = str(environment.get("SAFECITY_MQTT__PORT")) == "8883"
        for key, value in environment.items():
            value = self(str(value))
            if key == "SAFECITY_MQTT__HOST" and value == "mosquitto":
                # Over TLS a name the broker's certificate carries; plain: the address.
                value = "localhost" if tls else "127.0.0.1"
            elif key == "SAFECITY_MQTT__PORT" and value == "8883":
                value = str(self.tls_port)
            elif key == "SAFECITY_MQTT__PORT" and value == "1883":
                value = str(self.hosts["mosquitto"][1])
            elif re.fullmatch(r"SAFECITY_(\w*_)?PORT", key) and key != "SAFECITY_MQTT__PORT":
                value = str(self.port(int(value)))
            elif re.fullmatch(r"SAFECITY_\w*HOST", key) and value == "0.0.0.0":
                value = "127.0.0.1"  # inside a container: its network; here: loopback
            out[key] = value
        out["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
        return out


def run_one_shot(name: str, service: dict[str, Any], mapper: Mapper, cwd: Path) -> None:
    command = [mapper(word) for word in _command_of(service)]
    result = subprocess.run(
        command, env=mapper.env(service.get("environment", {})), cwd=cwd,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"{name}: {result.stdout}\n{result.stderr}"


def health_ok(service: dict[str, Any], mapper: Mapper, env: dict[str, str]) -> bool:
    test = service["healthcheck"]["test"]
    if test[0] == "CMD-SHELL":
        argv = ["sh", "-c", mapper(test[1])]
    else:
        argv = [mapper(word) for word in test[1:]]
    return (
        subprocess.run(argv, env=env, capture_output=True, timeout=20, check=False).returncode == 0
    )


@pytest.fixture
def compose_influxd(tmp_path: Path, resolved: dict[str, Any]) -> Iterator[Influxd]:
    """InfluxDB 1.x as the influxdb service runs it: authentication on, no account yet."""
    env = resolved["services"]["influxdb"]["environment"]
    assert env["INFLUXDB_HTTP_AUTH_ENABLED"] == "true"
    assert not [k for k in env if "PASSWORD" in k]
    with Influxd(tmp_path / "influxdb", auth_enabled=True) as influxd:
        yield influxd


def test_the_compose_stack_runs_here_and_becomes_healthy(  # noqa: PLR0915 - long; split it at its seams
    resolved: dict[str, Any], compose_influxd: Influxd, tmp_path: Path
) -> None:
    services = resolved["services"]
    mqtt_port = free_port()
    mapper = Mapper(tmp_path, mqtt_port, compose_influxd.port)
    for name, service in services.items():
        mapper.volume_dirs(service, name)
    for local in mapper.paths.values():
        if not local.endswith(".conf"):
            Path(local).mkdir(parents=True, exist_ok=True)

    # The secret files scripts/compose-secrets.sh makes, where compose mounts them.
    (tmp_path / "run-secrets").mkdir(exist_ok=True)
    for name, value in SECRET_FILES.items():
        (tmp_path / "run-secrets" / name).write_text(value)
    # 1. provisioning, exactly as compose runs it; then the broker on what it rendered.
    run_one_shot("provision", services["provision"], mapper, tmp_path)
    conf = Path(mapper("/mosquitto/config/mosquitto.conf"))
    tls_port = mapper.tls_port
    local_conf = tmp_path / "mosquitto-local.conf"
    text = mapper(conf.read_text())
    text = re.sub(r"^listener 1883$", f"listener {mqtt_port} 127.0.0.1", text, flags=re.M)
    text = re.sub(r"^listener 8883 \S+$", f"listener {tls_port} 127.0.0.1", text, flags=re.M)
    text = text.replace("log_dest stdout", f"log_dest file {tmp_path / 'mosquitto.log'}")
    # The image's plugin path -> where this host's Mosquitto package installed it.
    text = text.replace(dynsec.CONTAINER_PLUGIN, dynsec.find_plugin())
    local_conf.write_text(f"user {os.environ.get('USER', 'root')}\n" + text)
    broker = ManagedProcess(
        "mosquitto", [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(local_conf)],
        tmp_path / "mosquitto.stdout.log",
    )  # fmt: skip
    mapper.ports[1883] = mqtt_port
    broker_health = services["mosquitto"]["healthcheck"]["test"]
    assert broker_health[0] == "CMD-SHELL"
    broker_check = broker_health[1].replace("-p 1883", f"-p {mqtt_port}")
    broker.start()
    started: list[ManagedProcess] = [broker]
    try:
        broker.wait_ready(
            lambda: (
                subprocess.run(["sh", "-c", broker_check], timeout=10, check=False).returncode == 0
            ),
            30,
        )
        # 2. storage prepared with the admin account, services then run without it.
        run_one_shot("influx-init", services["influx-init"], mapper, tmp_path)
        # 3. every long-running safecity service with its exact command and environment.
        order = ["ingest", "notify", "alerts", "api", "simulator"]
        assert set(order) == {
            n for n in safecity_services(resolved) if n not in ("provision", "influx-init")
        }
        for name in order:
            service = services[name]
            env = mapper.env(service["environment"])
            command = [mapper(word) for word in _command_of(service)]
            proc = ManagedProcess(name, command, tmp_path / f"{name}.log", cwd=tmp_path, env=env)
            proc.start()
            started.append(proc)
            proc.wait_ready(lambda s=service, e=env: health_ok(s, mapper, e), 60)
        # 4. and the city flows end to end: the simulator's devices reach the API.
        api_env = mapper.env(services["api"]["environment"])
        keys = subprocess.run(
            [sys.executable, "-m", "control", "apikey", "create", "--name", "parity",
             "--scopes", "read"],
            env=api_env, cwd=tmp_path, capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        key = keys.stdout.strip().removeprefix("SAFECITY_API_KEY=")
        api = f"http://127.0.0.1:{api_env['SAFECITY_PORT']}"
        device = default_city().select(kind="air_quality")[0]
        wait_for(
            lambda: (
                httpx.get(
                    f"{api}/v1/devices/{device.id}/latest", headers={"X-API-Key": key}, timeout=5
                ).status_code
                == 200
            ),
            60,
            "the device's latest reading",
            interval=0.5,
        )
        secrets = json.loads((tmp_path / "secrets" / "secrets.json").read_text())
        assert device.id in secrets
        assert "_ingest" in secrets
    finally:
        for proc in reversed(started):
            proc.stop(10)
