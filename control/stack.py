"""Local stack launcher: real Mosquitto and InfluxDB 1.x processes on loopback.

Used by `safecity run`, the test fixtures and the benchmarks. Each service runs in
its own directory (config, data, logs) on a given or free port, in its own process
group so that Ctrl-C in a terminal reaches the launcher only and it can stop the
services in order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from broker import certs
from broker.config import (
    DEFAULT_MOSQUITTO_CONF,
    current_user,
    render_mosquitto_conf,
    render_secure_config,
    require_no_anonymous,
)
from broker.dynsec import DynsecAdmin
from broker.identity import (
    LOCAL_SERVICES,
    LocalIdentities,
    Role,
    reload_broker,
    service_username,
    write_secrets,
)
from control.influxd import Influxd, render_influxd_conf
from control.processes import (
    LOOPBACK,
    LocalService,
    ManagedProcess,
    ensure_port_free,
    find_binary,
    free_port,
    http_ok,
    tail_file,
)
from safecity.errors import ConfigError, StackError
from safecity.mqtt.wire import connack_reason as mqtt_connack_reason
from safecity.registry import Cities, City, default_city
from safecity.settings import MqttSettings

__all__ = [
    "DEFAULT_MOSQUITTO_CONF",
    "Influxd",
    "LocalStack",
    "ManagedProcess",
    "Mosquitto",
    "ensure_port_free",
    "find_binary",
    "free_port",
    "http_ok",
    "mqtt_connack_reason",
    "render_influxd_conf",
    "render_mosquitto_conf",
]

log = logging.getLogger("control.stack")


class Mosquitto(LocalService):
    """A local Mosquitto broker on host:port with its config, persistence and log in data_dir.

    Always the secure broker/mosquitto.conf: no anonymous access. Every device of `city`
    (default: the built-in Tashkent) and the local service accounts (`_ingest`, `_api`,
    `_alerts`, `_simulator`) get an account in `identity_dir` (credential store with
    hashes only, rendered dynamic-security config and a 0600 secrets file, all reused across
    restarts); with a `tls_port` (0 = a free one, None = no TLS listener) a local CA and
    the broker's server certificate are made (or reused) in `certs_dir`. With
    `mutual_tls` the TLS listener requires a client certificate (CN = username) and
    checks the CRL `certs_dir/crl.pem`; `device_certs` issues (or reuses) one for every
    device of the city in `certs_dir/clients/`.
    """

    name = "mosquitto"

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        *,
        host: str = LOOPBACK,
        config: Path | None = None,
        extra_config: Sequence[str] = (),
        binary: str | os.PathLike[str] | None = None,
        ready_timeout: float = 15.0,
        city: City | Cities | None = None,
        services: Sequence[Role] = LOCAL_SERVICES,
        identity_dir: Path | None = None,
        certs_dir: Path | None = None,
        tls_port: int | None = 0,
        mutual_tls: bool = False,
        device_certs: bool = False,
    ) -> None:
        self.binary = find_binary("mosquitto", "mosquitto", binary)
        self.host = host
        self.port = port or free_port(host)
        self.data_dir = Path(data_dir).resolve()
        self.template = config if config is not None else DEFAULT_MOSQUITTO_CONF
        self.extra_config = list(extra_config)
        self.conf_path = self.data_dir / "mosquitto.conf"
        self.log_path = self.data_dir / "mosquitto.log"
        self.pid_file = self.data_dir / "mosquitto.pid"
        self.ready_timeout = ready_timeout
        self.mutual_tls = mutual_tls
        self.tls_port = None if tls_port is None else (tls_port or free_port(host))
        self.certs_dir = Path(certs_dir or self.data_dir / "certs").resolve()
        try:
            self.identities = LocalIdentities(
                Path(identity_dir or self.data_dir / "identity").resolve(),
                city if city is not None else default_city(),
                services,
            )
            self.ca: certs.CertPaths | None = None
            self.server_cert: certs.CertPaths | None = None
            self.crl: Path | None = None
            if self.tls_port is not None:
                hosts = list(certs.DEFAULT_HOSTS)
                if host not in hosts:
                    hosts.append(host)
                self.ca, self.server_cert = certs.ensure_server(self.certs_dir, hosts)
                if mutual_tls:
                    # Revoked device certificates: the listener checks this CRL.
                    self.crl = certs.ensure_crl(self.certs_dir)
                if device_certs:
                    devices = [
                        d.id for city in self.identities.cities.values() for d in city.devices
                    ]
                    certs.ensure_clients(self.certs_dir, devices)
        except ConfigError as exc:
            raise StackError(f"cannot provision the broker's identities: {exc}") from exc
        self.process = ManagedProcess(
            self.name,
            [self.binary, "-c", str(self.conf_path)],
            self.data_dir / "mosquitto.stdout.log",
            cwd=self.data_dir,
        )

    # --- identities --------------------------------------------------------------

    @property
    def identity_dir(self) -> Path:
        """Credential store, rendered broker accounts and the secrets file."""
        return self.identities.directory

    @property
    def secrets_file(self) -> Path:
        """The 0600 JSON file with the secret of every active account."""
        return self.identities.secrets_file

    def secret(self, username: str) -> str:
        """The secret of an active account (a device id or `_ingest`, `_api`, ...)."""
        return self.identities.secret(username)

    def mqtt_settings(self, username: str, *, tls: bool = False, **kw: object) -> MqttSettings:
        """Settings to log in as `username`: the plain listener, or with tls=True the TLS one."""
        values: dict[str, object] = {
            "host": self.host,
            "port": self.port,
            "username": username,
            "password": self.secret(username),
        }
        if tls:
            if self.tls_port is None or self.ca is None:
                raise StackError("this broker has no TLS listener")
            values.update(port=self.tls_port, tls_ca=self.ca.cert)
        values.update(kw)
        return MqttSettings.model_validate(values)

    @property
    def client_certs_dir(self) -> Path:
        """Where the devices' client certificates live (`<id>.crt`, `<id>.key`)."""
        return self.certs_dir / "clients"

    def provision(self, *device_ids: str, city: str | None = None) -> dict[str, str]:
        """Add device accounts (e.g. of a test city); a running broker gets them at once."""
        issued = self.identities.add_devices(device_ids, city)
        self.apply(issued)
        return issued

    def provision_service(self, username: str, role: Role) -> dict[str, str]:
        """Add a service account (e.g. one scoped to a city, `_ingest.tashkent`); a running
        broker gets it at once. {} when it exists already."""
        identities = self.identities
        secret = identities.store.provision(username, role)
        issued = {} if secret is None else {username: secret}
        if issued:
            identities.store.save()
            identities.secrets.update(issued)
            write_secrets(identities.secrets_file, issued)
        self.apply(issued)
        return issued

    def apply(self, changes: Mapping[str, str | None]) -> None:
        """Put changed accounts ({username: new secret, or None = revoked}) on the running
        broker through $CONTROL; the store must already hold them. No-op when stopped."""
        if not changes or self.pid is None or not self.alive:
            return
        store = self.identities.store
        commands = [c for name, secret in changes.items() for c in store.commands(name, secret)]
        try:
            self.admin().apply(commands)
        except ConfigError as exc:
            raise StackError(f"cannot apply account changes to the broker: {exc}") from exc

    def admin(self) -> DynsecAdmin:
        """The dynamic-security admin of this broker (the `_admin` account)."""
        settings = MqttSettings(
            host=self.host,
            port=self.port,
            username=service_username(Role.ADMIN),
            password=self.identities.admin_secret,
        )
        return DynsecAdmin(settings)

    def reload(self) -> None:
        """SIGHUP the running broker: it re-reads its config, certificates and the CRL.

        Caveat: Mosquitto 2.0.11 forgets `max_qos` on SIGHUP until its next restart.
        """
        if self.pid is not None and self.alive:
            reload_broker(self.pid)

    # --- config and lifecycle ---------------------------------------------------

    def render_config(self) -> Path:
        """Write the instance config into data_dir and return its path."""
        try:
            template = self.template.read_text(encoding="utf-8")
        except OSError as exc:
            raise StackError(
                f"cannot read mosquitto config template {self.template}: {exc}"
            ) from exc
        store = self.identities.store
        try:
            secure = render_secure_config(
                template,
                dynsec_file=store.dynsec_file,
                pid_file=self.pid_file,
                tls_port=self.tls_port,
                tls_host=self.host,
                cafile=self.ca.cert if self.ca else None,
                certfile=self.server_cert.cert if self.server_cert else None,
                keyfile=self.server_cert.key if self.server_cert else None,
                mutual_tls=self.mutual_tls,
                crlfile=self.crl,
            )
        except ConfigError as exc:
            raise StackError(str(exc)) from exc
        rendered = render_mosquitto_conf(
            secure,
            host=self.host,
            port=self.port,
            data_dir=self.data_dir,
            user=current_user(),
            extra_lines=self.extra_config,
        )
        require_no_anonymous(rendered, self.template)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(rendered, encoding="utf-8")
        return self.conf_path

    def start(self) -> Self:
        """Render the config, start the broker and wait until it answers an MQTT CONNECT."""
        self.render_config()
        ensure_port_free(self.host, self.port, self.name)
        if self.tls_port is not None:
            ensure_port_free(self.host, self.tls_port, f"{self.name} (TLS)")
        log.info(
            "starting mosquitto on %s:%d (TLS %s)", self.host, self.port, self.tls_port or "off"
        )
        self.process.start()
        try:
            took = self.process.wait_ready(self._probe, self.ready_timeout)
        except StackError as exc:
            # Mosquitto logs start-up errors after config loading to its own file.
            broker_log = tail_file(self.log_path)
            if broker_log:
                raise StackError(f"{exc}\nlast lines of {self.log_path}:\n{broker_log}") from None
            raise
        log.info("mosquitto ready in %.2fs (pid %s)", took, self.pid)
        return self

    def _probe(self) -> bool:
        # Logged in as the read-only API account: no "not authorised" noise in the
        # broker log (the security-events feed counts those), and it proves the password
        # file was loaded. Any CONNACK still means "serving".
        reason = mqtt_connack_reason(
            self.host,
            self.port,
            timeout=1.0,
            username=self._probe_user(),
            password=self._probe_secret(),
        )
        return reason is not None

    def _probe_user(self) -> str | None:
        for name in ("_api", "_ingest", *sorted(self.identities.secrets)):
            if name in self.identities.secrets:
                return name
        return None

    def _probe_secret(self) -> str | None:
        user = self._probe_user()
        return self.identities.secrets.get(user) if user is not None else None


class LocalStack:
    """Mosquitto then InfluxDB in subdirectories of base_dir, stopped in reverse order.

    The broker is the secure one: accounts for every device of `city` (default: the
    built-in Tashkent) and the services in base_dir/identity (store, broker accounts, 0600
    secrets file; reused across runs), a local CA and server certificate in
    base_dir/certs (reused), a plain listener on loopback and a TLS listener on
    `mqtt_tls_port` (0 = a free port); with `mutual_tls` that listener requires device
    certificates, issued for every device into base_dir/certs/clients.
    """

    def __init__(
        self,
        base_dir: Path,
        mqtt_port: int = 0,
        influx_port: int = 0,
        *,
        host: str = LOOPBACK,
        mqtt_tls_port: int = 0,
        city: City | Cities | None = None,
        mosquitto_config: Path | None = None,
        mosquitto_extra_config: Sequence[str] = (),
        die_with_parent: bool = False,
        mutual_tls: bool = False,
    ) -> None:
        self.base_dir = Path(base_dir).resolve()
        # Both binaries are resolved here, so a missing one fails before anything starts.
        self.mosquitto = Mosquitto(
            self.base_dir / "mosquitto",
            mqtt_port,
            host=host,
            config=mosquitto_config,
            extra_config=mosquitto_extra_config,
            city=city,
            identity_dir=self.base_dir / "identity",
            certs_dir=self.base_dir / "certs",
            tls_port=mqtt_tls_port,
            mutual_tls=mutual_tls,
            device_certs=mutual_tls,
        )
        self.influxd = Influxd(self.base_dir / "influxdb", influx_port, host=host)
        for process in (self.mosquitto.process, self.influxd.process):
            process.die_with_parent = die_with_parent

    @property
    def mqtt_host(self) -> str:
        """Host of the broker listener."""
        return self.mosquitto.host

    @property
    def mqtt_port(self) -> int:
        """Port of the broker's plain (loopback) listener."""
        return self.mosquitto.port

    @property
    def mqtt_tls_port(self) -> int | None:
        """Port of the broker's TLS listener."""
        return self.mosquitto.tls_port

    @property
    def ca_file(self) -> Path | None:
        """The local CA certificate that signed the broker's TLS certificate."""
        return self.mosquitto.ca.cert if self.mosquitto.ca else None

    @property
    def city(self) -> City:
        """The (first) city whose devices have accounts on the broker."""
        return self.mosquitto.identities.city

    @property
    def cities(self) -> Cities:
        """Every city whose devices have accounts on the broker."""
        return self.mosquitto.identities.cities

    @property
    def identity_dir(self) -> Path:
        """Credential store, rendered broker accounts and the secrets file."""
        return self.mosquitto.identity_dir

    @property
    def secrets_file(self) -> Path:
        """The 0600 JSON file with the secret of every active broker account."""
        return self.mosquitto.secrets_file

    @property
    def broker_address(self) -> str:
        """HOST:PORT where `safecity devices ...` applies changes (SAFECITY_BROKER)."""
        return f"{self.mosquitto.host}:{self.mosquitto.port}"

    @property
    def broker_pidfile(self) -> Path:
        """Mosquitto's pid_file (SIGHUP: re-read config and certificates)."""
        return self.mosquitto.pid_file

    def secret(self, username: str) -> str:
        """The secret of an active broker account (device id, `_ingest`, `_api`, ...)."""
        return self.mosquitto.secret(username)

    def mqtt_settings(self, username: str, *, tls: bool = False, **kw: object) -> MqttSettings:
        """MqttSettings to log in as `username` (plain loopback listener, or TLS)."""
        return self.mosquitto.mqtt_settings(username, tls=tls, **kw)

    @property
    def influx_url(self) -> str:
        """Base URL of InfluxDB's HTTP API."""
        return self.influxd.url

    def start(self) -> Self:
        """Start the broker, then InfluxDB; on failure stop what was started and re-raise."""
        try:
            self.mosquitto.start()
            self.influxd.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop InfluxDB, then the broker; idempotent."""
        self.influxd.stop()
        self.mosquitto.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
