"""docker-compose.yml run for real: podman, local images from Debian packages, ordered start.

deploy/local/podman_stack.py builds the images (reused by content hash after the first
run), starts the repository's compose file plus deploy/local/compose.podman.yml with
three ingest replicas, and enforces every health check; this module then checks what
only a real run shows (see docs/compose.md for what differs from Docker and why). The
driver's progress is shown as it runs, and the module ends by printing where the time
went (build steps, start, each test, down), cold or warm.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from locks import applicable
from packaging.utils import canonicalize_name
from support import mosquitto, wait_for

from control.stack import free_port

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "deploy" / "local" / "podman_stack.py"
PROJECT = f"sctest{os.getpid()}"
INGEST_REPLICAS = 3
# A cold build of every image takes minutes on a loaded machine; the stack seconds.
BUILD_TIMEOUT = 1500
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT + 900)


def load_driver() -> ModuleType:
    spec = importlib.util.spec_from_file_location("podman_stack", DRIVER)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["podman_stack"] = module
    spec.loader.exec_module(module)
    return module


stack_mod = load_driver()


# Where the time went: the driver's step timings and each test's, printed at the end.
TIMES: dict[str, float] = {}
DRIVER_TIMINGS: dict[str, dict[str, Any]] = {}


class Stack:
    """The running compose project, its host ports and the driver's podman wrapper."""

    def __init__(self, env: dict[str, str], show: Callable[[str], None]) -> None:
        self.env = env
        self.show = show
        self.podman = stack_mod.Podman(Path(env["SAFECITY_PODMAN_DIR"]), PROJECT, env)
        self.api_port = int(env["API_HOST_PORT"])
        self.mqtt_host = "localhost"  # the name the broker's certificate is for
        self.mqtt_port = int(env["MQTT_TLS_HOST_PORT"])

    def driver(
        self, *args: str, timeout: float = 900, live: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run the driver; LIVE shows its progress lines as they come."""
        began = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, str(DRIVER), *args, "--project", PROJECT],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr and proc.stdout
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("podman-stack: timings "):
                DRIVER_TIMINGS[args[0]] = json.loads(line.split(" ", 2)[2])
            elif live:
                self.show(line.rstrip())
            if time.monotonic() - began > timeout:
                proc.kill()
        out = proc.stdout.read()
        proc.wait(timeout=60)
        TIMES[f"driver {args[0]}"] = TIMES.get(f"driver {args[0]}", 0) + time.monotonic() - began
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, "".join(lines))

    def name(self, service: str, index: int = 1) -> str:
        return f"{PROJECT}_{service}_{index}"

    def exec(self, container: str, *cmd: str) -> str:
        return str(self.podman.run("exec", container, *cmd, timeout=120).stdout)

    def inspect(self, container: str) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.podman.run("inspect", container).stdout)[0]
        return found

    def metrics(self, container: str, port: int) -> str:
        script = f"import urllib.request as u;print(u.urlopen('http://127.0.0.1:{port}/metrics').read().decode())"
        return self.exec(container, "python", "-c", script)

    def address(self, container: str) -> str:
        networks = self.inspect(container)["NetworkSettings"]["Networks"]
        return str(next(iter(networks.values()))["IPAddress"])


def host_port() -> int:
    """A free port below the kernel's ephemeral range.

    A port from bind(0) is an ephemeral one: between choosing it and podman publishing it
    (a cold build takes minutes) any outgoing connection on this busy machine may take it.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = random.randrange(max(1024, low - 16000), low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("0.0.0.0", port))  # podman publishes on every address
            except OSError:
                continue
        return port
    return free_port()


def metric_sum(text: str, name: str) -> float:
    return sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def started(stamp: str) -> datetime:
    # podman prints nanoseconds and a zone name; seconds and microseconds are enough here.
    match = re.match(r"(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d)(?:\.(\d+))?", stamp)
    assert match, stamp
    micro = (match.group(2) or "0")[:6].ljust(6, "0")
    return datetime.fromisoformat(match.group(1).replace(" ", "T") + "." + micro)


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this run's compose secrets live: a temp dir, never the checkout."""
    return tmp_path_factory.mktemp("compose-secrets")


def breakdown() -> str:
    """Cold or warm, and the seconds of each step of this module's run."""
    built = DRIVER_TIMINGS.get("build", {}).get("images", {})
    if any(k.startswith(stack_mod.BASE_IMAGE) and v == "built" for k, v in built.items()):
        kind = "cold"
    else:
        kind = "warm" if built and "built" not in built.values() else "partly cached"
    lines = [f"compose test timings ({kind}; load average at start {TIMES_LOAD}):"]
    for command in ("build", "up", "down"):
        timings = DRIVER_TIMINGS.get(command, {})
        for name, value in timings.get("steps", {}).items():
            cpu = timings.get("cpu", {}).get(name)
            lines.append(
                f"  {command:5} {name}: {value:.1f}s" + (f" (cpu {cpu:.1f}s)" if cpu else "")
            )
    for name, value in TIMES.items():
        lines.append(f"  {name}: {value:.1f}s")
    return "\n".join(lines)


TIMES_LOAD = [round(x, 2) for x in os.getloadavg()]


@pytest.fixture(autouse=True)
def timed(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test's own seconds, for the breakdown."""
    began = time.monotonic()
    yield
    TIMES[f"test {request.node.name.removeprefix('test_')}"] = time.monotonic() - began


@pytest.fixture(scope="module")
def show(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Write a line to the terminal even while pytest captures output."""
    capman = request.config.pluginmanager.getplugin("capturemanager")

    def write(line: str) -> None:
        with capman.global_and_fixture_disabled():
            print(line, file=sys.stderr, flush=True)

    return write


@pytest.fixture(scope="module")
def stack(secrets_dir: Path, show: Callable[[str], None]) -> Iterator[Stack]:
    for tool in ("podman", "runc", "mmdebstrap", "mosquitto_sub"):
        assert shutil.which(tool), (
            f"{tool} missing: `make test` installs it (scripts/setup.sh --test)"
        )
    assert (Path(sys.executable).parent / "podman-compose").exists(), (
        "scripts/setup.sh installs it (requirements-dev.lock)"
    )
    env = {
        **os.environ,
        "API_HOST_PORT": str(host_port()),
        "MQTT_TLS_HOST_PORT": str(host_port()),
        "SAFECITY_PODMAN_DIR": os.environ.get("SAFECITY_PODMAN_DIR", str(stack_mod.DEFAULT_STATE)),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "COMPOSE_SECRETS_DIR": str(secrets_dir),
    }
    secrets = subprocess.run(
        ["sh", str(ROOT / "scripts" / "compose-secrets.sh")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert secrets.returncode == 0, secrets.stderr
    running = Stack(env, show)
    began = time.monotonic()
    built = running.driver("build", timeout=BUILD_TIMEOUT, live=True)
    assert built.returncode == 0, built.stderr
    try:
        for _ in range(3):
            up = running.driver("up", "--scale", f"ingest={INGEST_REPLICAS}", live=True)
            if up.returncode == 0 or "address already in use" not in up.stderr:
                break
            # Another process took a free port before podman bound it: new ports, again.
            running.driver("down")
            env["API_HOST_PORT"], env["MQTT_TLS_HOST_PORT"] = str(host_port()), str(host_port())
            running = Stack(env, show)
        assert up.returncode == 0, up.stderr
        yield running
    finally:
        if any(stack_mod.leftovers(running.podman).values()):  # the last test downs it
            running.driver("down")
        TIMES["total (build, up, tests, down)"] = time.monotonic() - began
        show(breakdown())


def test_every_service_healthy_with_no_restarts(stack: Stack) -> None:
    report = stack_mod.check(stack.podman)
    by_service: dict[str, list[dict[str, Any]]] = {}
    for entry in report:
        by_service.setdefault(entry["service"], []).append(entry)
    assert set(by_service) == {
        "provision",
        "influx-init",
        "mosquitto",
        "influxdb",
        "ingest",
        "alerts",
        "notify",
        "rollup",
        "api",
        "simulator",
    }
    assert len(by_service["ingest"]) == INGEST_REPLICAS
    for entry in report:
        assert entry["restarts"] == 0, entry
        wanted = "completed" if entry["service"] in ("provision", "influx-init") else "healthy"
        assert entry["status"] == wanted, entry


def test_the_image_holds_exactly_the_runtime_lock(stack: Stack) -> None:
    """The Dockerfile installs requirements.lock with --require-hashes: nothing else."""
    listing = stack.exec(stack.name("api"), "python", "-m", "pip", "list", "--format=json")
    installed = {
        canonicalize_name(p["name"]): p["version"]
        for p in json.loads(listing)
        if canonicalize_name(p["name"]) not in {"pip", "setuptools", "safecity"}
    }
    assert installed == applicable(ROOT / "requirements.lock")


def test_provisioning_ran_before_the_broker(stack: Stack) -> None:
    provision = stack.inspect(stack.name("provision"))["State"]
    broker = stack.inspect(stack.name("mosquitto"))
    assert provision["ExitCode"] == 0
    assert started(provision["FinishedAt"]) <= started(broker["State"]["StartedAt"])
    assert broker["RestartCount"] == 0
    # The broker runs the provisioned config (no anonymous access), never its default.
    conf = stack.exec(stack.name("mosquitto"), "cat", "/mosquitto/config/mosquitto.conf")
    assert re.search(r"^allow_anonymous false$", conf, re.M)
    assert "plugin_opt_config_file /mosquitto/config/dynamic-security.json" in conf
    plugin = stack.exec(
        stack.name("mosquitto"), "readlink", "-e", "/usr/lib/mosquitto_dynamic_security.so"
    )
    assert plugin.strip(), "the broker's security plugin is missing"


def test_tls_port_refuses_anonymous_and_accepts_a_device(stack: Stack, tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text(stack.exec(stack.name("mosquitto"), "cat", "/mosquitto/certs/ca.crt"))
    secrets = json.loads(stack.exec(stack.name("api"), "cat", "/run/safecity/secrets/secrets.json"))
    device = next(name for name in sorted(secrets) if not name.startswith("_"))
    rest = ["--cafile", str(ca), "-t", "hc", "-C", "1", "-W", "3"]
    anonymous = subprocess.run(
        [
            *mosquitto("mosquitto_sub", stack, None, client_id="anon-test", version="mqttv311"),
            *rest,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert anonymous.returncode != 0
    assert "not authori" in (anonymous.stdout + anonymous.stderr).lower()
    # A device's own account connects; devices may subscribe to nothing, so the broker
    # then denies the subscription (a refused login would end at CONNACK instead).
    login = mosquitto(
        "mosquitto_sub", stack, device, secret=secrets[device], client_id=device, version="mqttv311"
    )
    accepted = subprocess.run(
        [*login, *rest],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    out = (accepted.stdout + accepted.stderr).lower()
    assert "not authori" not in out and "connection error" not in out, out
    assert "subscription requests were denied" in out, out


def test_readings_reach_influxdb_and_the_api_overview(stack: Stack, secrets_dir: Path) -> None:
    password = (secrets_dir / "influx_password").read_text()
    query = [
        "curl",
        "-sfG",
        "http://127.0.0.1:8086/query",
        "-u",
        f"safecity:{password}",
        "--data-urlencode",
        "db=safecity",
        "--data-urlencode",
        "q=SELECT count(*) FROM air_quality",
    ]

    def stored() -> bool:
        result = json.loads(stack.exec(stack.name("influxdb"), *query))
        series = result["results"][0].get("series")
        return bool(series and max(v for v in series[0]["values"][0][1:] if v is not None) > 0)

    wait_for(stored, 120, "air_quality points in InfluxDB", interval=2)
    created = stack.exec(
        stack.name("api"),
        "safecity",
        "apikey",
        "create",
        "--name",
        "compose-test",
        "--scopes",
        "read",
    )
    key = re.search(r"SAFECITY_API_KEY=(\S+)", created)
    assert key, created
    headers = {"X-API-Key": key.group(1)}
    base = f"http://127.0.0.1:{stack.api_port}/v1/cities"
    city = httpx.get(base, headers=headers, timeout=30).json()["items"][0]["id"]
    overview = httpx.get(f"{base}/{city}/overview", headers=headers, timeout=30)
    assert overview.status_code == 200, overview.text
    aqi = overview.json()["air_quality"]["aqi"]
    assert aqi["devices"] > 0 and aqi["value"] is not None, aqi
    assert overview.json()["devices"]["online"] > 0


def test_ingest_replicas_split_the_load_with_stable_ids(stack: Stack) -> None:
    ids = {}
    for index in range(1, INGEST_REPLICAS + 1):
        name = stack.name("ingest", index)
        logs = stack.podman.run("logs", name).stdout + stack.podman.run("logs", name).stderr
        match = re.search(r'"msg": "ingest started".*?"worker": "([^"]+)"', logs)
        assert match, f"{name} did not log its start"
        ids[name] = match.group(1)
        assert metric_sum(stack.metrics(name, 9101), "safecity_ingest_received_total") > 0, (
            f"{name} received nothing"
        )
    assert sorted(ids.values()) == [f"{PROJECT}-ingest-{i}" for i in range(1, INGEST_REPLICAS + 1)]
    # A restarted replica comes back as itself (same MQTT session, same spool).
    second = stack.name("ingest", 2)
    stack.podman.run("restart", "-t", "10", second, timeout=120)
    stack_mod.wait_healthy(stack.podman, "ingest", {"interval": "2s", "retries": 30}, 120)

    def started_again() -> bool:
        logs = stack.podman.run("logs", second)
        return len(re.findall(r'"msg": "ingest started"', logs.stdout + logs.stderr)) >= 2

    wait_for(started_again, 60, f"{second} to start again", interval=1)
    logs = stack.podman.run("logs", second).stdout + stack.podman.run("logs", second).stderr
    workers = re.findall(r'"msg": "ingest started".*?"worker": "([^"]+)"', logs)
    assert workers == [ids[second]] * 2


def test_nothing_is_lost_across_the_replicas(
    stack: Stack, tmp_path: Path, secrets_dir: Path
) -> None:
    # The continuous simulator stops; a bounded one writes a ledger, `safecity verify` checks it.
    began = time.monotonic()
    # Its graceful stop (every device's session closed, outstanding PUBACKs awaited) takes
    # ~10 s and is not what this test checks: a few seconds, then SIGKILL.
    stack.podman.run("stop", "-t", "4", stack.name("simulator"), timeout=120)
    TIMES["nothing_is_lost: stop the simulator"] = time.monotonic() - began
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    run = stack.podman.compose(
        "run",
        "--rm",
        "--no-deps",
        "-v",
        f"{shared}:/ledger",
        "simulator",
        "safecity",
        "simulate",
        "--duration",
        "10",
        "--ledger",
        "/ledger/ledger.jsonl",
        timeout=300,
    )
    assert (shared / "ledger.jsonl").stat().st_size > 0, run.stderr
    TIMES["nothing_is_lost: + the bounded simulator run"] = time.monotonic() - began
    deadletters = tmp_path / "deadletters"
    stack.podman.run("cp", f"{stack.name('ingest')}:/var/lib/safecity/deadletter", str(deadletters))
    env = {
        **os.environ,
        "SAFECITY_INFLUX__URL": f"http://{stack.address(stack.name('influxdb'))}:8086",
        "SAFECITY_INFLUX__DATABASE": "safecity",
        "SAFECITY_INFLUX__USERNAME": "safecity",
        "SAFECITY_INFLUX__PASSWORD_FILE": str(secrets_dir / "influx_password"),
    }
    runs: list[subprocess.CompletedProcess[str]] = []

    def verified() -> bool:
        runs.append(
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "control",
                    "verify",
                    "--ledger",
                    str(shared / "ledger.jsonl"),
                    "--deadletters",
                    str(deadletters),
                    "--json",
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        )
        return runs[-1].returncode == 0

    # The replicas may still be writing the last batches: verify again until it passes;
    # the last run's report is what a failure shows.
    with contextlib.suppress(AssertionError):
        wait_for(verified, 90, "`safecity verify` to pass", interval=1)
    TIMES["nothing_is_lost: + verify"] = time.monotonic() - began
    assert runs[-1].returncode == 0, runs[-1].stdout + runs[-1].stderr


def test_check_names_an_unhealthy_service(stack: Stack) -> None:
    api = stack.name("api")
    stack.podman.run("kill", "--signal", "STOP", api)  # frozen: its health check times out
    try:
        result = stack.driver("check")
    finally:
        stack.podman.run("kill", "--signal", "CONT", api)
    assert result.returncode == 1
    assert f"service api: {api} is unhealthy" in result.stderr, result.stderr


def test_check_names_a_restarted_service(stack: Stack) -> None:
    alerts = stack.name("alerts")
    stack.podman.run("exec", alerts, "sh", "-c", "kill 1", check=False)
    wait_for(lambda: stack.inspect(alerts)["RestartCount"] != 0, 60, "podman to restart alerts", 1)
    result = stack.driver("check")
    assert result.returncode == 1
    assert "service alerts:" in result.stderr and "restarted" in result.stderr, result.stderr


def test_down_leaves_nothing_behind(stack: Stack) -> None:
    down = stack.driver("down")
    assert down.returncode == 0, down.stderr
    assert stack_mod.leftovers(stack.podman) == {"containers": [], "volumes": [], "networks": []}
