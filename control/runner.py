"""`safecity run`: the whole local stack — broker, InfluxDB, ingest, API, alerts, notify, city.

Each safecity service runs as its own child process (`python -m control <service>`)
configured only through SAFECITY_ environment variables, exactly as in docker
compose. Ctrl-C stops them in reverse order, then the stack.

The broker admits no anonymous client: every registry device and each service has its
own account (`<data_dir>/identity`, secrets in a 0600 file reused across runs); each
service gets its own account through SAFECITY_MQTT__USERNAME/PASSWORD, and the
simulated fleet the per-device secrets file (SAFECITY_EDGE__SECRETS_FILE).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from broker.identity import Role, service_username
from control.region import Region
from control.settings import StackSettings
from control.stack import LocalStack, ManagedProcess, ensure_port_free, free_port, http_ok
from safecity import citygen, instance, registry
from safecity.appendlog import AppendedLines
from safecity.errors import ConfigError, StackError
from safecity.settings import InfluxSettings

log = logging.getLogger("safecity.run")

LOCAL_KEY_NAME = "make-run"
"""The name of the key each run makes (and the next run revokes)."""
READY_TIMEOUT_S = 120.0
"""How long a service may take to answer its readiness probe, from when the wait for it
begins. The services start together and share the cores with a big city's simulator
building its fleet (an API that answers in 28 s alone may need twice that then)."""


def _port(configured: int) -> int:
    return free_port() if configured == 0 else configured


def registry_setting(paths: Sequence[Path]) -> str:
    """The `registry` setting as a child reads it: a JSON list of absolute paths."""
    return json.dumps([str(p.resolve()) for p in paths])


def service_env(
    stack: LocalStack, settings: StackSettings, role: Role | None = None, **extra: str
) -> dict[str, str]:
    """The environment a service child gets: the parent's, where the stack listens, its account.

    `role` names the service's own broker account (`_ingest`, `_api`, ...); its secret is
    passed in the environment, never on a command line or in a log.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFECITY_")}
    env.update(
        {
            "SAFECITY_MQTT__HOST": stack.mqtt_host,
            "SAFECITY_MQTT__PORT": str(stack.mqtt_port),
            "SAFECITY_INFLUX__URL": stack.influx_url,
            "SAFECITY_LOG_LEVEL": settings.log_level,
            # Every path a service keeps (dead letters, spool, keys, ...) is in the instance.
            "SAFECITY_HOME": str(settings.data_dir.resolve()),
            # `safecity devices revoke|rotate|provision` from a child changes this broker at once.
            "SAFECITY_IDENTITY_DIR": str(stack.identity_dir),
            "SAFECITY_BROKER": stack.broker_address,
        }
    )
    if role is not None:
        username = service_username(role)
        env["SAFECITY_MQTT__USERNAME"] = username
        env["SAFECITY_MQTT__PASSWORD"] = stack.secret(username)
    if settings.registry:
        env["SAFECITY_REGISTRY"] = registry_setting(settings.registry)
    env.update(extra)
    return env


def with_city_registries(settings: StackSettings, where: instance.Layout) -> StackSettings:
    """With `cities`: their built-in registries, written into the instance, become the
    `registry` setting every child reads (each city then gets its fleet and database)."""
    if not settings.cities:
        return settings
    if settings.registry:
        raise StackError("give the cities to run (--cities) or registry files, not both")
    where.cities_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for city in settings.cities:
        path = where.cities_dir / f"{city}.jsonl"
        registry.write(citygen.builtin(city), path)
        paths.append(path)
    return settings.model_copy(update={"registry": tuple(paths)})


class LocalRun:
    """The running local stack and its service children."""

    def __init__(self, settings: StackSettings) -> None:
        self.base = settings.data_dir.resolve()
        self.layout = instance.layout(self.base)
        self.settings = with_city_registries(settings, self.layout)
        self.cities = registry.load_cities(self.settings.registry)
        if settings.simulator_processes > 1 and len(self.cities) > 1:
            raise StackError(
                f"simulator_processes={settings.simulator_processes} spreads one city's "
                "fleet: run one city (several cities share one simulator process)"
            )
        self.children: list[ManagedProcess] = []
        # Launched children not yet ready: name -> (process, probe, launch time).
        self._starting: dict[str, tuple[ManagedProcess, Callable[[], bool], float]] = {}
        self.stack: LocalStack | None = None
        self.region: Region | None = None
        self.api_url = ""
        self.metrics_url = ""
        self.alerts_url = ""
        self.notify_url = ""
        self.rollup_url = ""
        self.api_key = ""

    def start(self) -> None:
        """Start everything and wait until each part answers; on failure stop what started."""
        s = self.settings
        self._preflight()
        try:
            self.base.mkdir(parents=True, exist_ok=True)
            self._start_region_broker()
            # Identities in <data_dir>/identity: new registry devices are provisioned,
            # existing secrets reused (0600 secrets file), revoked accounts stay revoked.
            self.stack = LocalStack(
                self.base,
                mqtt_port=s.mqtt_port,
                influx_port=s.influx_port,
                mqtt_tls_port=s.mqtt_tls_port,
                city=self.cities,
                # Even a SIGKILLed launcher must not leave the stack running.
                die_with_parent=True,
                # Mutual TLS: a certificate per device in <data_dir>/certs/clients, a CRL.
                mutual_tls=s.device_tls == "mtls",
                # With a region: one bridge per city to the regional broker.
                mosquitto_extra_config=self.region.bridge_lines() if self.region else (),
            )
            issued = self.stack.mosquitto.identities.issued
            log.info(
                "broker identities ready",
                extra={
                    "accounts": len(self.stack.mosquitto.identities.secrets),
                    "new_secrets": len(issued),
                    "secrets_file": str(self.stack.secrets_file),
                },
            )
            self.stack.start()
            federation_env = self._federation_env()
            api_port = _port(s.api_port)
            metrics_port = _port(s.ingest_metrics_port)
            alerts_port = _port(s.alerts_metrics_port)
            self.api_url = f"http://127.0.0.1:{api_port}"
            self.metrics_url = f"http://127.0.0.1:{metrics_port}"
            self.alerts_url = f"http://127.0.0.1:{alerts_port}"
            replay_window: dict[str, str] = {}
            ingest_env = {
                "SAFECITY_METRICS_PORT": str(metrics_port),
                # One worker: a plain subscription survives broker restarts (see README).
                "SAFECITY_SHARE_GROUP": "",
                # Auth failures and ACL denials in the broker's log -> security_events.
                "SAFECITY_BROKER_LOG": str(self.stack.mosquitto.log_path),
            }
            if s.speed != 1.0:
                # Compressed time runs ahead of the wall clock; the local stack is a
                # replay, so ingest and alerts accept simulated timestamps (ten years
                # each way).
                replay_window["SAFECITY_TS_FUTURE_WINDOW"] = str(10 * 365 * 86_400)
                replay_window["SAFECITY_TS_PAST_WINDOW"] = str(10 * 365 * 86_400)
                log.warning("speed %s: timestamp windows widened for the replay", s.speed)
            # Launched together, awaited where something depends on them: the ingest,
            # notify and alerts are subscribed before the first reading, the API and the
            # rollup job start beside the fleet (nothing of the fleet waits for them).
            self._child(
                "ingest",
                Role.INGEST,
                {**ingest_env, **replay_window},
                ready=http_ok(f"{self.metrics_url}/readyz"),
            )
            self.api_key = self._local_api_key()
            self._child(
                "api",
                Role.API,
                {
                    "SAFECITY_HOST": "127.0.0.1",
                    "SAFECITY_PORT": str(api_port),
                    # Delivery accounting against what this run's simulator sent.
                    "SAFECITY_LEDGER_FILE": str(self.layout.ledger_file),
                    **federation_env,
                    **self._api_limits_env(),
                    # Commands go out as the command role, the only one that may send them.
                    "SAFECITY_COMMANDS__PASSWORD": self.stack.secret(
                        service_username(Role.COMMAND)
                    ),
                },
                ready=http_ok(f"{self.api_url}/readyz"),
            )
            self._start_rollup()
            self._start_notify(api_port)
            self._await_ready("ingest", "notify")
            self._start_alerts(alerts_port, replay_window)
            # A new run, a new ledger: `safecity verify` checks what this run sent, in
            # the databases of the cities it serves.
            self.layout.ledger_file.unlink(missing_ok=True)
            instance.record_cities(self.layout, self.cities.ids)
            self._child(
                "simulate",
                Role.SIMULATOR,
                {
                    "SAFECITY_SPEED": str(s.speed),
                    "SAFECITY_SEED": str(s.seed),
                    "SAFECITY_PROGRESS_INTERVAL": str(s.progress_interval),
                    "SAFECITY_PROCESSES": str(s.simulator_processes),
                    # Every device logs in as itself with its own secret (read once).
                    "SAFECITY_EDGE__SECRETS_FILE": str(self.stack.secrets_file),
                    "SAFECITY_LEDGER": str(self.layout.ledger_file),
                    **self._device_tls_env(),
                },
                ready=None,
            )
            self._await_ready("api", "rollup")
            # Now every command finds this run: its pid and where it listens.
            instance.record(
                self.layout,
                instance.Running(
                    pid=os.getpid(),
                    mqtt_host=self.stack.mqtt_host,
                    mqtt_port=self.stack.mqtt_port,
                    mqtt_tls_port=self.stack.mqtt_tls_port,
                    influx_url=self.stack.influx_url,
                    api_url=self.api_url,
                    registry=registry_setting(s.registry) if s.registry else None,
                    speed=s.speed,
                    cities=self.cities.ids,
                ),
            )
        except BaseException:
            self.stop()
            raise

    def _preflight(self) -> None:
        """Refuse to start over a running city, another city's databases or a taken port."""
        s = self.settings
        already = instance.running(self.layout)
        if already is not None:
            raise StackError(
                f"a city is already running in {self.base} (safecity run, pid {already.pid}); "
                "stop it first, or give this one another SAFECITY_HOME"
            )
        self._claim_databases()
        for name, port in (
            ("api", s.api_port),
            ("ingest metrics", s.ingest_metrics_port),
            ("alerts metrics", s.alerts_metrics_port),
            ("notify metrics", s.notify_metrics_port),
            ("rollup metrics", s.rollup_metrics_port),
        ):
            if port:
                ensure_port_free("127.0.0.1", port, name)

    def _claim_databases(self) -> None:
        """Refuse a city whose database holds another city's data (a single city switched
        in the same instance would reuse `safecity`); the last run's cities count too."""
        ids = self.cities.ids
        influx = InfluxSettings()
        before = instance.recorded_cities(self.layout)
        try:
            if before and not self.layout.databases_file.exists():
                instance.claim_databases(
                    self.layout, {influx.database_for(c, before): c for c in before}
                )
            instance.claim_databases(self.layout, {influx.database_for(c, ids): c for c in ids})
        except ConfigError as exc:
            raise StackError(str(exc)) from exc

    def _start_region_broker(self) -> None:
        """With `region`: the regional broker first (the cities' bridges connect to it)."""
        s = self.settings
        if not s.with_region:
            return
        self.region = Region(self.base / "region", self.cities, s.region_api_port)
        self.region.check_ports()
        self.region.start_broker()

    def _api_limits_env(self) -> dict[str, str]:
        """The API's per-key rate limit, where the run sets it (else the API's default)."""
        s = self.settings
        env = {}
        if s.api_rate_limit_rps is not None:
            env["SAFECITY_RATE_LIMIT_RPS"] = str(s.api_rate_limit_rps)
        if s.api_rate_limit_burst is not None:
            env["SAFECITY_RATE_LIMIT_BURST"] = str(s.api_rate_limit_burst)
        return env

    def _federation_env(self) -> dict[str, str]:
        """The API's federation settings; with a region, the regional ingest and API start
        here (before any city publishes) and the cities' API publishes."""
        assert self.stack is not None
        s = self.settings
        env = {
            "SAFECITY_FEDERATION__INTERVAL": str(s.local_federation_interval),
            "SAFECITY_FEDERATION__DELAY": str(s.local_federation_delay),
        }
        if self.region is None:
            return env
        self.region.start_services(
            self.stack.influx_url,
            {**env, "SAFECITY_API_KEYS_FILE": str(self.layout.api_keys_file.resolve())},
        )
        publisher = service_username(Role.FEDERATION)
        self.stack.mosquitto.provision_service(publisher, Role.FEDERATION)
        env.update(
            {
                "SAFECITY_FEDERATION__ENABLED": "true",
                "SAFECITY_FEDERATION__USERNAME": publisher,
                "SAFECITY_FEDERATION__PASSWORD": self.stack.secret(publisher),
            }
        )
        return env

    def _device_tls_env(self) -> dict[str, str]:
        """The simulator's connection for `device_tls`: the TLS listener, CA, device certs."""
        assert self.stack is not None
        mode = self.settings.device_tls
        if mode == "off":
            return {}
        if self.stack.mqtt_tls_port is None or self.stack.ca_file is None:
            raise StackError(f"device_tls={mode} needs the broker's TLS listener")
        env = {
            "SAFECITY_MQTT__PORT": str(self.stack.mqtt_tls_port),
            "SAFECITY_MQTT__TLS_CA": str(self.stack.ca_file),
        }
        if mode == "mtls":
            env["SAFECITY_EDGE__TLS_CLIENT_DIR"] = str(self.stack.mosquitto.client_certs_dir)
        return env

    def _local_api_key(self) -> str:
        """A fresh read+operate key in the run's key store, so a newcomer can call the API;
        the key of the previous run (shown only then) is revoked, so runs leave no trail of
        live keys."""
        from api.apikeys import KeyStore

        store = KeyStore(self.layout.api_keys_file)
        store.load()
        old = [r.id for r in store.records() if r.name == LOCAL_KEY_NAME and r.active]
        for key_id in old:
            store.revoke(key_id)
        record, key = store.create(LOCAL_KEY_NAME, ("read", "operate"))
        log.info("local API key created", extra={"key_id": record.id, "revoked": old})
        return key

    def _child(
        self,
        service: str,
        role: Role | None,
        env: dict[str, str],
        ready: Callable[[], bool] | None,
    ) -> None:
        assert self.stack is not None
        proc = ManagedProcess(
            service,
            [sys.executable, "-m", "control", service],
            self.base / f"{service}.log",
            cwd=Path.cwd(),
            env=service_env(self.stack, self.settings, role, **env),
            die_with_parent=True,
        )
        log.info("starting %s", service, extra={"log": str(self.base / f"{service}.log")})
        proc.start()
        self.children.append(proc)
        if ready is not None:
            self._starting[service] = (proc, ready, time.monotonic())

    def _await_ready(self, *services: str) -> None:
        """Wait until each of these launched services answers (each gets `READY_TIMEOUT_S`
        from when the wait for it begins)."""
        for service in services:
            proc, ready, launched = self._starting.pop(service)
            proc.wait_ready(ready, timeout=READY_TIMEOUT_S)
            log.info("%s ready in %.2fs", service, time.monotonic() - launched)

    def _start_notify(self, api_port: int) -> None:
        """The notifier, before the alerts service: its session exists before any opening."""
        port = _port(self.settings.notify_metrics_port)
        self.notify_url = f"http://127.0.0.1:{port}"
        self._child(
            "notify",
            Role.NOTIFY,
            {
                "SAFECITY_NOTIFY_METRICS_PORT": str(port),
                # One instance: a plain subscription survives broker restarts.
                "SAFECITY_NOTIFY_SHARE_GROUP": "",
                # The acknowledgement links in the messages point at this run's API.
                "SAFECITY_NOTIFY_ACK_BASE_URL": f"http://127.0.0.1:{api_port}",
            },
            ready=http_ok(f"{self.notify_url}/readyz"),
        )

    def _start_alerts(self, port: int, replay_window: dict[str, str]) -> None:
        """The alerts service (after the notifier: its session exists before any opening)."""
        self._child(
            "alerts",
            Role.ALERTS,
            {
                "SAFECITY_ALERTS_METRICS_PORT": str(port),
                # One instance: a plain subscription survives broker restarts.
                "SAFECITY_ALERTS_SHARE_GROUP": "",
                **replay_window,
            },
            ready=http_ok(f"{self.alerts_url}/readyz"),
        )
        self._await_ready("alerts")

    def _start_rollup(self) -> None:
        """The rollup job: it reads and writes InfluxDB only, so no broker account."""
        rollup_port = _port(self.settings.rollup_metrics_port)
        self.rollup_url = f"http://127.0.0.1:{rollup_port}"
        self._child(
            "rollup",
            None,
            {"SAFECITY_ROLLUP_METRICS_PORT": str(rollup_port)},
            ready=http_ok(f"{self.rollup_url}/readyz"),
        )

    def stop(self) -> None:
        """Stop the services in reverse order, then the stack; idempotent."""
        instance.forget(self.layout, os.getpid())
        self._starting.clear()
        for proc in reversed(self.children):
            proc.stop(timeout=15)
        self.children.clear()
        if self.region is not None:
            self.region.stop_services()
        if self.stack is not None:
            self.stack.stop()
        if self.region is not None:
            self.region.stop_broker()

    def check(self) -> None:
        """Raise StackError if a child died."""
        for proc in self.children:
            if not proc.alive:
                raise StackError(
                    f"{proc.name} exited with {proc.returncode}; last log lines:\n{proc.log_tail()}"
                )
        if self.region is not None:
            self.region.check()


def _home_hint(base: Path) -> str:
    """What other terminals need to find this instance, when it is not the default one."""
    if instance.home().resolve() == base:
        return ""
    return f"; from other terminals after export SAFECITY_HOME={base}"


def _databases(run: LocalRun) -> str:
    ids = run.cities.ids
    # The children get no database setting: each city's database follows the default.
    return ", ".join(repr(InfluxSettings().database_for(c, ids)) for c in ids)


def _device_link(mode: str) -> str:
    return {
        "off": "plain MQTT on loopback (SAFECITY_DEVICE_TLS=tls|mtls for TLS)",
        "tls": "TLS (broker verified against the local CA; device passwords)",
        "mtls": "mutual TLS (a certificate per device, CN = device id; CRL checked)",
    }[mode]


def show_notifications(notices: AppendedLines) -> None:
    """Print what the notifier's local channel delivered since the last look."""
    _, lines = notices.read()
    for line in lines:
        try:
            record = json.loads(line)
            print(f"NOTIFICATION to {record['to']}: {record['text']}", flush=True)
        except (ValueError, KeyError, TypeError):
            continue  # a line the notifier did not write: nothing to show


def run_local(settings: StackSettings) -> int:
    """Run the local stack until Ctrl-C or SIGTERM; return the exit status."""
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    run = LocalRun(settings)
    console_log = run.layout.notify_dir / "console.jsonl"
    notices = AppendedLines(console_log)
    notices.read()  # earlier runs' notifications were shown then
    try:
        run.start()
        assert run.stack is not None
        print(
            f"\nsafecity is running\n"
            f"  API key        SAFECITY_API_KEY={run.api_key}   (header X-API-Key)\n"
            f"  console + API  {run.api_url}/   (OpenAPI docs: {run.api_url}/docs)\n"
            f"  MQTT broker    mqtt://{run.stack.mqtt_host}:{run.stack.mqtt_port}"
            f"   (loopback; no anonymous access)\n"
            f"  MQTT over TLS  mqtts://{run.stack.mqtt_host}:{run.stack.mqtt_tls_port}"
            f"   (CA {run.stack.ca_file})\n"
            f"  devices over   {_device_link(settings.device_tls)}\n"
            f"  MQTT secrets   {run.stack.secrets_file}   (0600; one account per device"
            f" and service)\n"
            f"  instance       {run.base}   (commands find it: safecity devices list,"
            f" apikey create, deadletter stats, verify{_home_hint(run.base)})\n"
            f"  cities         {', '.join(run.cities.ids)}   (each its own fleet)\n"
            f"  InfluxDB       {run.stack.influx_url}  (database {_databases(run)})\n"
            f"  ingest metrics {run.metrics_url}/metrics\n"
            f"  alerts metrics {run.alerts_url}/metrics\n"
            f"  notify metrics {run.notify_url}/metrics   (notifications: shown below, and"
            f" in {console_log})\n"
            f"  rollup metrics {run.rollup_url}/metrics   (minute, hour and day tiers)\n"
            f"  logs           {run.base}/*.log\n"
            f"{run.region.banner() if run.region else ''}"
            f"Press Ctrl-C to stop.\n",
            flush=True,
        )
        started = time.monotonic()
        while not stop.wait(2.0):
            run.check()
            show_notifications(notices)
            if int(time.monotonic() - started) % 30 < 2:
                log.info("stack running", extra={"uptime_s": round(time.monotonic() - started)})
        print("stopping ...", flush=True)
        return 0
    finally:
        run.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
