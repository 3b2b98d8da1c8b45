"""Shared fixtures: one real Mosquitto + InfluxDB stack per test session, on free ports.

The session broker is the platform's secure one (broker/mosquitto.conf): no anonymous
access; every device of the built-in Tashkent and each service has its own account,
and every service child gets its own account through SAFECITY_MQTT__USERNAME/PASSWORD.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, settings
from receivers import HttpReceiver
from scheduling import Recorder, longest_first
from support import account_env

from api.apikeys import KeyStore
from control.stack import Influxd, LocalStack, ManagedProcess, Mosquitto, free_port, http_ok

# Speed is measured in benchmarks/, never in tests: on a loaded machine a property test
# must not fail for being slow (its own @settings still choose its examples).
settings.register_profile("safecity", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("safecity")


def pytest_addoption(parser: pytest.Parser) -> None:
    """`--record-file-times`: the run's per-file seconds into the scheduling table."""
    parser.addoption(
        "--record-file-times",
        action="store_true",
        help="write each file's measured seconds to tests/helpers/file_seconds.json "
        "(the files this run ran replace their figures; the order of later runs)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist, the files go out in the order `pytest_collection_modifyitems` gives;
    with --record-file-times, the controller (or the only process) records the times."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False
    if config.getoption("record_file_times") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(Recorder(), "file-times-recorder")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest test files first (tests/helpers/scheduling.py), so that with
    `--dist loadfile` both workers finish together instead of one ending alone."""
    items[:] = longest_first(items)


@pytest.fixture(scope="session", autouse=True)
def instance_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """SAFECITY_HOME in a temp dir for the whole session: whatever a test starts keeps its
    instance data (spool, dead letters, keys, ...) there, never in the checkout."""
    home: Path = tmp_path_factory.mktemp("home")
    patch = pytest.MonkeyPatch()
    patch.setenv("SAFECITY_HOME", str(home))
    yield home
    patch.undo()


@pytest.fixture(scope="module")
def module_now() -> datetime:
    """UTC now in whole seconds, taken when the module's first test that asks for it
    begins: what a module's seeded data and windows are placed relative to. (Taken at
    import, a module run an hour into the session found its data outside its windows.)"""
    return datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A started LocalStack (secure broker + InfluxDB) in a temp dir, stopped at session end."""
    base: Path = tmp_path_factory.mktemp("stack")
    with LocalStack(base, mqtt_port=0, influx_port=0) as started:
        yield started


@pytest.fixture(scope="session")
def mosquitto(stack: LocalStack) -> Mosquitto:
    """The session's broker."""
    return stack.mosquitto


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker of the test's own on free ports (the secure config, the session broker's
    accounts), for a test that kills, restarts or pauses it; stopped at the end."""
    broker = Mosquitto(tmp_path / "own-broker", tls_port=None)
    broker.start()
    try:
        yield broker
    finally:
        broker.resume()  # a paused broker would not stop on SIGTERM
        broker.stop()


@pytest.fixture(scope="session")
def influxd(stack: LocalStack) -> Influxd:
    """The session's InfluxDB."""
    return stack.influxd


@pytest.fixture
def influx_db(influxd: Influxd) -> Iterator[str]:
    """Name of a fresh, empty database on the session's InfluxDB (dropped afterwards)."""
    name = f"test_{secrets.token_hex(6)}"
    response = httpx.post(
        f"{influxd.url}/query", data={"q": f'CREATE DATABASE "{name}"'}, timeout=10
    )
    response.raise_for_status()
    yield name
    # Best effort: a test that stopped or paused influxd must not fail here.
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(f"{influxd.url}/query", data={"q": f'DROP DATABASE "{name}"'}, timeout=5)


@dataclass
class ServiceProcess:
    """A safecity service started as a real child process (`python -m control ...`)."""

    process: ManagedProcess
    env: dict[str, str]
    metrics_url: str = ""
    url: str = ""
    api_key: str = ""

    @property
    def headers(self) -> dict[str, str]:
        """Request headers carrying the service's API key (an operate key for the API)."""
        return {"X-API-Key": self.api_key} if self.api_key else {}

    def stop(self) -> None:
        """Stop the service (SIGTERM, then SIGKILL)."""
        self.process.stop(timeout=15)


class Launcher:
    """Starts safecity services as child processes; stops every one at the end of a test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[ServiceProcess] = []

    def previous(self, key: str, value: str) -> ServiceProcess | None:
        """The last service started with env[key] == value (a restart of the same id)."""
        return next((s for s in reversed(self.started) if s.env.get(key) == value), None)

    def launch(
        self,
        command: str,
        name: str,
        env: dict[str, str],
        ready_url: str,
        *,
        launcher: tuple[str, ...] = ("-m", "control"),
        **fields: str,
    ) -> ServiceProcess:
        """`python -m control <command>` (or `python <launcher...> <command>`) with env;
        returns once ready_url answers 200."""
        proc = ManagedProcess(
            name,
            [sys.executable, *launcher, command],
            self.tmp_path / f"{name}-{len(self.started)}.log",
            env=env,
        )
        service = ServiceProcess(proc, env, **fields)
        self.started.append(service)
        proc.start()
        proc.wait_ready(http_ok(ready_url), timeout=30)
        return service

    def stop_all(self) -> None:
        """Stop every service this launcher started."""
        for service in self.started:
            service.stop()


POISON_LAUNCHER = Path(__file__).parent / "helpers" / "poison_service.py"


def service_env(stack: LocalStack, database: str, service: str, **extra: str) -> dict[str, str]:
    """Environment for a service child: the stack's endpoints, its own account, a database."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("SAFECITY_") or k == "SAFECITY_HOME"
    }
    env.update(
        {
            "SAFECITY_MQTT__HOST": stack.mqtt_host,
            "SAFECITY_MQTT__PORT": str(stack.mqtt_port),
            "SAFECITY_INFLUX__URL": stack.influx_url,
            "SAFECITY_INFLUX__DATABASE": database,
            "SAFECITY_LOG_LEVEL": "DEBUG",
            **account_env(stack, service),
        }
    )
    env.update(extra)
    return env


@pytest.fixture
def start_ingest(stack: LocalStack, tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Factory: start `safecity ingest` for a database; every started worker is stopped after."""
    launcher = Launcher(tmp_path)

    def start(database: str, worker_id: str | None = None, **extra: str) -> ServiceProcess:
        worker = worker_id or f"ingest-{secrets.token_hex(4)}"
        port = free_port()
        # A restarted worker keeps its share group, so its session is resumed.
        before = launcher.previous("SAFECITY_WORKER_ID", worker)
        group = before.env["SAFECITY_SHARE_GROUP"] if before else f"g{secrets.token_hex(4)}"
        env = service_env(
            stack,
            database,
            "ingest",
            SAFECITY_WORKER_ID=worker,
            SAFECITY_SHARE_GROUP=group,
            SAFECITY_METRICS_PORT=str(port),
            SAFECITY_DEADLETTER_DIR=str(tmp_path / "deadletter"),
            **extra,
        )
        metrics_url = f"http://127.0.0.1:{port}"
        return launcher.launch(
            "ingest", f"ingest-{worker}", env, f"{metrics_url}/readyz", metrics_url=metrics_url
        )

    yield start
    launcher.stop_all()


@pytest.fixture
def start_api(stack: LocalStack, tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Factory: start `safecity api` for a database on a free port; stopped after."""
    launcher = Launcher(tmp_path)

    def start(database: str, **extra: str) -> ServiceProcess:
        port = free_port()
        # Every non-health endpoint needs a key: provision one in a key store of its own.
        keys_file = tmp_path / f"apikeys-{port}.json"
        extra.setdefault("SAFECITY_API_KEYS_FILE", str(keys_file))
        extra.setdefault("SAFECITY_AUDIT_LOG_FILE", str(tmp_path / f"audit-{port}.jsonl"))
        _, key = KeyStore(Path(extra["SAFECITY_API_KEYS_FILE"])).create(
            "tests", ("read", "operate")
        )
        env = service_env(
            stack, database, "api", SAFECITY_HOST="127.0.0.1", SAFECITY_PORT=str(port), **extra
        )
        url = f"http://127.0.0.1:{port}"
        return launcher.launch("api", "api", env, f"{url}/readyz", url=url, api_key=key)

    yield start
    launcher.stop_all()


def launch_grouped(
    launcher: Launcher,
    stack: LocalStack,
    database: str,
    service: str,
    ident: str | None,
    extra: dict[str, str],
    how: tuple[str, ...] = ("-m", "control"),
) -> ServiceProcess:
    """Start `safecity <service>` (alerts, notify: a stable id, a share group, a metrics
    port, `SAFECITY_<SERVICE>_...`); a restart with the same id keeps its share group, so
    its persistent session resumes."""
    prefix = f"SAFECITY_{service.upper()}"
    ident = ident or f"{service}-{secrets.token_hex(4)}"
    port = free_port()
    before = launcher.previous(f"{prefix}_ID", ident)
    group = before.env[f"{prefix}_SHARE_GROUP"] if before else f"{service[0]}{secrets.token_hex(4)}"
    env = service_env(
        stack,
        database,
        service,
        **{f"{prefix}_ID": ident, f"{prefix}_SHARE_GROUP": group},
        **{f"{prefix}_METRICS_PORT": str(port)},
        **extra,
    )
    metrics_url = f"http://127.0.0.1:{port}"
    return launcher.launch(
        service,
        f"{service}-{ident}",
        env,
        f"{metrics_url}/readyz",
        launcher=how,
        metrics_url=metrics_url,
    )


@pytest.fixture
def start_alerts(stack: LocalStack, tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Factory: start `safecity alerts` for a database (`launch_grouped`); every started
    service is stopped after."""
    launcher = Launcher(tmp_path)

    def start(
        database: str,
        alerts_id: str | None = None,
        *,
        poison: tuple[str, str] | None = None,
        **extra: str,
    ) -> ServiceProcess:
        """With `poison` (stage, marker): through the launcher whose stage raises on every
        message holding the marker (tests/helpers/poison_service.py)."""
        how = ("-m", "control") if poison is None else (str(POISON_LAUNCHER), *poison)
        return launch_grouped(launcher, stack, database, "alerts", alerts_id, extra, how)

    yield start
    launcher.stop_all()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """With the docs test in the session: how many doc blocks ran, how many are marked, why."""
    ran = {r.nodeid for r in terminalreporter.stats.get("passed", [])}
    ran |= {r.nodeid for r in terminalreporter.stats.get("failed", [])}
    if not any("test_docs_run.py" in nodeid for nodeid in ran):
        return
    from docblocks import all_blocks

    found = all_blocks(Path(__file__).resolve().parent.parent)
    marked = [b for b in found if b.skipped]
    terminalreporter.write_sep(
        "-", f"docs: {len(found) - len(marked)} command blocks run, {len(marked)} marked"
    )
    for block in marked:
        terminalreporter.write_line(f"  {block.where}: {block.options['reason']}")


@pytest.fixture
def start_notify(stack: LocalStack, tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Factory: start `safecity notify` for a database (`launch_grouped`); every started
    notifier is stopped after."""
    launcher = Launcher(tmp_path)

    def start(database: str, notify_id: str | None = None, **extra: str) -> ServiceProcess:
        return launch_grouped(launcher, stack, database, "notify", notify_id, extra)

    yield start
    launcher.stop_all()


@pytest.fixture
def hook() -> Iterator[HttpReceiver]:
    """A webhook receiver that verifies the notifier's signatures (tests/helpers/receivers.py)."""
    server = HttpReceiver("webhook")
    yield server
    server.close()
