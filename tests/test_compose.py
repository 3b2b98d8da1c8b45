"""Compose parity: docker-compose.yml, verified without a Docker engine.

`docker-compose config` (Debian's docker-compose, no daemon needed) validates the file and
resolves it. Then every safecity service of it runs here with its exact command and
environment — container host names mapped to real local Mosquitto and InfluxDB processes,
container paths to temp dirs, listen ports to free ports — and must pass its own compose
health check. The broker runs the config the compose provisioning step renders.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from composehost import SECRET_FILES, ComposeHost, api_key, command_of, compose_config
from operating import command_executed
from pydantic import BaseModel
from support import wait_for

from alerts.settings import AlertsSettings
from api.settings import ApiSettings
from broker.settings import SecuritySettings
from control.settings import BackupSettings, StorageSettings
from control.stack import Influxd
from dashboards import build
from ingest.settings import IngestSettings
from notify.settings import NotifySettings
from rollups.settings import RollupSettings
from safecity import settings as settings_mod
from safecity.registry import default_city
from simulators.settings import SimulatorSettings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
# Which settings class each safecity command reads (the env names it understands).
SETTINGS_OF = {
    "ingest": IngestSettings,
    "api": ApiSettings,
    "alerts": AlertsSettings,
    "notify": NotifySettings,
    "rollup": RollupSettings,
    "simulate": SimulatorSettings,
    "influx": StorageSettings,
    "devices": SecuritySettings,
    "backup": BackupSettings,
}
SAFECITY_IMAGE = "safecity:local"


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    result = compose_config(COMPOSE)
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
            # A *_TOKEN_URL is an address, not a secret.
            if re.search(r"PASSWORD|TOKEN(?!_URL)|SECRET(?!S_FILE)", key):
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


def test_the_rollup_job_runs_beside_the_api_on_the_same_tiers(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    job, api = services["rollup"], services["api"]
    assert command_of(job) == ["safecity", "rollup"]
    assert job["depends_on"] == {"influx-init": {"condition": "service_completed_successfully"}}
    env, api_env = job["environment"], api["environment"]
    assert env["HEALTHCHECK_URL"] == "http://127.0.0.1:9105/readyz"
    assert env["SAFECITY_ROLLUP_METRICS_PORT"] == "9105"
    # The job writes the tiers the API reads: the same database, tiers and account.
    for name in ("SAFECITY_INFLUX__URL", "SAFECITY_INFLUX__DATABASE", "SAFECITY_INFLUX__USERNAME"):
        assert env[name] == api_env[name], name
    assert env.get("SAFECITY_INFLUX__ROLLUP_TIERS") == api_env.get("SAFECITY_INFLUX__ROLLUP_TIERS")
    assert not any(k.startswith("SAFECITY_MQTT") for k in env)


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


def test_grafana_reads_the_generated_ini_with_its_variables_and_client_secret(
    resolved: dict[str, Any],
) -> None:
    grafana = resolved["services"]["grafana"]
    mounts = {v.split(":")[1]: Path(v.split(":")[0]) for v in grafana["volumes"]}
    ini = mounts["/etc/grafana/grafana.ini"].read_text(encoding="utf-8")
    assert ini == build.files()["config/grafana.ini"]
    env = grafana["environment"]
    for variable in re.findall(r"\$__env\{([A-Z_][A-Z0-9_]*)\}", ini):
        assert variable in env, f"grafana.ini expands {variable}, compose does not set it"
    # Off unless the operator turns it on (the provider's addresses are theirs).
    assert env["SAFECITY_GRAFANA_OIDC_ENABLED"] == "false"
    granted = {s if isinstance(s, str) else s["source"] for s in grafana["secrets"]}
    (secret,) = re.findall(r"\$__file\{([^}]+)\}", ini)
    assert secret.startswith("/run/secrets/") and Path(secret).name in granted, secret


def _fields(model: type[BaseModel], prefix: str = "SAFECITY_") -> set[str]:
    names = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= _fields(annotation, f"{prefix}{name.upper()}__")
        names.add(f"{prefix}{name.upper()}")
    return names


def test_every_safecity_variable_is_a_setting_of_that_service(resolved: dict[str, Any]) -> None:
    for name, service in safecity_services(resolved).items():
        command = command_of(service)
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
    # the ones with SQLite databases (a reader of a live one needs its shared-memory file):
    # the notifier's outbox, the API's command store and outboxes.
    for name, service in safecity_services(resolved).items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("/"):
                assert source in mounts, f"the backup does not read {source} ({name}'s)"
                target, mode = targets[source], mounts[source][1:]
                wanted = ["rw"] if source in ("notify-data", "api-data") else ["ro"]
                assert target.startswith(f"{home}/") and mode == wanted, (source, target, mode)
    command = " ".join(command_of(backup))
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


@pytest.fixture
def compose_influxd(tmp_path: Path, resolved: dict[str, Any]) -> Iterator[Influxd]:
    """InfluxDB 1.x as the influxdb service runs it: authentication on, no account yet."""
    env = resolved["services"]["influxdb"]["environment"]
    assert env["INFLUXDB_HTTP_AUTH_ENABLED"] == "true"
    assert not [k for k in env if "PASSWORD" in k]
    with Influxd(tmp_path / "influxdb", auth_enabled=True) as influxd:
        yield influxd


def _command_a_streetlight(api: str, api_env: dict[str, str], cwd: Path) -> None:
    """A command to a simulated streetlight ends `executed`, from a store on api-data."""
    key = api_key(api_env, cwd, "operator", "read,operate")
    light = default_city().select(kind="streetlight")[0]
    command_executed(api, key, light, name="set_level", params={"level": 30})
    assert Path(api_env["SAFECITY_COMMANDS_FILE"]).is_file()
    # The incident steps' outbox is on api-data too (it outlives the container, and the
    # backup reads it there).
    assert api_env["SAFECITY_STEPS_OUTBOX_FILE"].startswith(
        str(Path(api_env["SAFECITY_COMMANDS_FILE"]).parents[1])
    )


def test_the_compose_stack_runs_here_and_becomes_healthy(
    resolved: dict[str, Any], compose_influxd: Influxd, tmp_path: Path
) -> None:
    host = ComposeHost(tmp_path, resolved, compose_influxd.port)
    try:
        # 1. provisioning, exactly as compose runs it; then the broker on what it rendered.
        host.run_one_shot("provision")
        host.start_broker("mosquitto")
        # 2. storage prepared with the admin account, services then run without it.
        host.run_one_shot("influx-init")
        # 3. every long-running safecity service with its exact command and environment.
        order = ["ingest", "notify", "alerts", "rollup", "api", "simulator"]
        assert set(order) == {
            n for n in safecity_services(resolved) if n not in ("provision", "influx-init")
        }
        envs = {name: host.start(name) for name in order}
        # 4. and the city flows end to end: the simulator's devices reach the API.
        key = api_key(envs["api"], tmp_path, "parity", "read")
        api = f"http://127.0.0.1:{envs['api']['SAFECITY_PORT']}"
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
        assert {"_ingest", "_command"} <= set(secrets)
        # 5. the API commands a simulated device as `_command`, the account compose made.
        _command_a_streetlight(api, envs["api"], tmp_path)
    finally:
        host.stop_all()
