"""A regional instance beside the local cities (`safecity run --region`, docs/federation.md).

The region gets its own broker (a TLS listener for the cities' bridges, its own CA),
its own ingest (region mode, its own metrics port) and its own API, all on their own
ports, under `<data_dir>/region/`. It shares the run's InfluxDB process but writes and
reads only its own database (`safecity_federation`). The files a region hands to its
cities are made as docs/federation.md makes them by hand: the bridge accounts'
secrets in `region/identity/bridge-secrets.json` (0600) and the region's CA
certificate `region/certs/ca.crt`; the cities' broker then gets one bridge section
per city (`broker.bridge.render_bridge`, as `safecity broker config --bridge` renders it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from broker.bridge import bridge_username, render_bridge
from broker.identity import Role, service_username, write_secrets
from control.processes import LOOPBACK, ManagedProcess, ensure_port_free, free_port, http_ok
from control.stack import Mosquitto
from safecity.errors import StackError
from safecity.federation import RegionSettings
from safecity.registry import Cities, City

BRIDGE_SECRETS_FILE = "bridge-secrets.json"


def _no_devices(cities: Cities) -> City:
    """A city record without devices: the regional broker has no device accounts."""
    first = cities.first
    return City(first.record, first.districts, ())


class Region:
    """The regional broker, ingest and API of a local run; started after the cities' broker
    exists (the bridges need the region's CA and secrets first), stopped before it."""

    def __init__(self, base: Path, cities: Cities, api_port: int) -> None:
        self.base = base.resolve()
        self.cities = cities
        self.api_port = api_port or free_port()
        self.metrics_port = free_port()
        self.database = RegionSettings().database
        self.broker = Mosquitto(
            self.base / "mosquitto",
            city=_no_devices(cities),
            services=(Role.REGION, Role.API),
            identity_dir=self.base / "identity",
            certs_dir=self.base / "certs",
            tls_port=0,
        )
        self.broker.process.die_with_parent = True
        # What `safecity devices provision --bridge CITY --secrets-file ...` makes.
        self.bridge_secrets: dict[str, str] = {}
        for city in cities.ids:
            username = bridge_username(city)
            self.broker.provision_service(username, Role.BRIDGE)
            self.bridge_secrets[username] = self.broker.secret(username)
        write_secrets(self.bridge_secrets_file, self.bridge_secrets)
        self.children: list[ManagedProcess] = []

    @property
    def bridge_secrets_file(self) -> Path:
        """The 0600 file of the bridge accounts' secrets, handed to the cities."""
        return self.base / "identity" / BRIDGE_SECRETS_FILE

    @property
    def ca_file(self) -> Path:
        """The region's CA certificate (the cities' bridges verify the broker with it)."""
        assert self.broker.ca is not None
        return self.broker.ca.cert

    @property
    def address(self) -> str:
        """HOST:PORT of the regional broker's TLS listener (where the bridges connect)."""
        return f"{self.broker.host}:{self.broker.tls_port}"

    @property
    def api_url(self) -> str:
        """The regional API."""
        return f"http://{LOOPBACK}:{self.api_port}"

    def bridge_lines(self) -> list[str]:
        """The cities' broker's bridge sections: one per city, each with its own account."""
        lines: list[str] = []
        for city in self.cities.ids:
            username = bridge_username(city)
            lines += render_bridge(
                address=self.address,
                cities=[city],
                cafile=self.ca_file,
                username=username,
                password=self.bridge_secrets[username],
                restart=(1, 10),
            )
        return lines

    def banner(self) -> str:
        """The run banner's lines about the region."""
        return (
            f"  region API     {self.api_url}/v1/region/overview   (the same API key;"
            f" figures per closed interval)\n"
            f"  region broker  mqtts://{self.address}   (CA {self.ca_file}; bridges log in"
            f" with {self.bridge_secrets_file})\n"
            f"  region ingest  http://{LOOPBACK}:{self.metrics_port}/metrics"
            f"   (database '{self.database}'; logs {self.base}/*.log)\n"
        )

    def check_ports(self) -> None:
        """Stop early, naming the port, when the regional API's port is taken."""
        ensure_port_free(LOOPBACK, self.api_port, "regional api")

    def start_broker(self) -> None:
        """The regional broker: before the cities' broker, whose bridges connect to it."""
        self.broker.start()

    def start_services(self, influx_url: str, api_env: dict[str, str]) -> None:
        """The regional ingest (before any city publishes: its session queues from then on),
        then the regional API (no cities of its own: SAFECITY_REGION__LOCAL=false)."""
        metrics = f"http://{LOOPBACK}:{self.metrics_port}"
        self._child(
            "ingest",
            Role.REGION,
            influx_url,
            {
                "SAFECITY_REGION__ENABLED": "true",
                "SAFECITY_METRICS_PORT": str(self.metrics_port),
                "SAFECITY_WORKER_ID": "region-0",
            },
            f"{metrics}/readyz",
        )
        self._child(
            "api",
            Role.API,
            influx_url,
            {
                **api_env,
                "SAFECITY_HOST": LOOPBACK,
                "SAFECITY_PORT": str(self.api_port),
                "SAFECITY_REGION__LOCAL": "false",
                # Its own endpoints read the region's database, never a city's.
                "SAFECITY_INFLUX__DATABASE": self.database,
            },
            f"{self.api_url}/readyz",
        )

    def _child(
        self, service: str, role: Role, influx_url: str, extra: dict[str, str], ready: str
    ) -> None:
        username = service_username(role)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SAFECITY_")}
        env.update(
            {
                "SAFECITY_HOME": str(self.base),
                "SAFECITY_MQTT__HOST": self.broker.host,
                "SAFECITY_MQTT__PORT": str(self.broker.port),
                "SAFECITY_MQTT__USERNAME": username,
                "SAFECITY_MQTT__PASSWORD": self.broker.secret(username),
                "SAFECITY_INFLUX__URL": influx_url,
                **extra,
            }
        )
        proc = ManagedProcess(
            f"region {service}",
            [sys.executable, "-m", "control", service],
            self.base / f"{service}.log",
            cwd=Path.cwd(),
            env=env,
            die_with_parent=True,
        )
        proc.start()
        self.children.append(proc)
        proc.wait_ready(http_ok(ready), timeout=60)

    def check(self) -> None:
        """Raise StackError if a regional service died."""
        for proc in self.children:
            if not proc.alive:
                raise StackError(
                    f"{proc.name} exited with {proc.returncode}; last log lines:\n{proc.log_tail()}"
                )

    def stop_services(self) -> None:
        """Stop the regional API and ingest; idempotent."""
        for proc in reversed(self.children):
            proc.stop(timeout=15)
        self.children.clear()

    def stop_broker(self) -> None:
        """Stop the regional broker; idempotent."""
        self.broker.stop()
