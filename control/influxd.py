"""A local InfluxDB 1.x server for `safecity run`, the tests and the benchmarks."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Self

import httpx

from control.processes import (
    LOOPBACK,
    LocalService,
    ManagedProcess,
    ensure_port_free,
    find_binary,
    free_port,
)

__all__ = ["Influxd", "render_influxd_conf"]

log = logging.getLogger("control.stack")


def render_influxd_conf(
    *, host: str, port: int, rpc_port: int, data_dir: Path, auth_enabled: bool = False
) -> str:
    """An influxd 1.x config: loopback only, everything under data_dir, quiet logs."""
    return f"""\
# Written by control.influxd for one local instance.
# The Debian build renamed the upstream key reporting-disabled to reporting-enabled;
# influxd ignores unknown keys, so both are set.
reporting-disabled = true
reporting-enabled = false
# Backup/restore RPC port: the default 8088 would clash between instances.
bind-address = "{host}:{rpc_port}"

[meta]
  dir = "{data_dir / "meta"}"

[data]
  dir = "{data_dir / "data"}"
  wal-dir = "{data_dir / "wal"}"
  query-log-enabled = false

[http]
  bind-address = "{host}:{port}"
  auth-enabled = {"true" if auth_enabled else "false"}
  log-enabled = false

[monitor]
  # No _internal database: it only costs disk and CPU in tests.
  store-enabled = false

[continuous_queries]
  log-enabled = false

[logging]
  level = "warn"
"""


class Influxd(LocalService):
    """A local InfluxDB 1.x server on host:port with its config and data in data_dir."""

    name = "influxd"

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        *,
        host: str = LOOPBACK,
        binary: str | os.PathLike[str] | None = None,
        ready_timeout: float = 30.0,
        auth_enabled: bool = False,
    ) -> None:
        self.binary = find_binary("influxd", "influxdb", binary)
        # With auth on, /ping still answers without credentials (readiness is unchanged).
        self.auth_enabled = auth_enabled
        self.host = host
        self.port = port or free_port(host)
        self.rpc_port = free_port(host)
        self.data_dir = Path(data_dir).resolve()
        self.conf_path = self.data_dir / "influxdb.conf"
        self.ready_timeout = ready_timeout
        self.process = ManagedProcess(
            self.name,
            [self.binary, "run", "-config", str(self.conf_path)],
            self.data_dir / "influxd.log",
            cwd=self.data_dir,
        )

    @property
    def url(self) -> str:
        """Base URL of the HTTP API, e.g. http://127.0.0.1:8086."""
        return f"http://{self.host}:{self.port}"

    def render_config(self) -> Path:
        """Write the instance config into data_dir and return its path."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(
            render_influxd_conf(
                host=self.host,
                port=self.port,
                rpc_port=self.rpc_port,
                data_dir=self.data_dir,
                auth_enabled=self.auth_enabled,
            ),
            encoding="utf-8",
        )
        return self.conf_path

    def start(self) -> Self:
        """Render the config, start influxd and wait until GET /ping answers 204."""
        self.render_config()
        ensure_port_free(self.host, self.port, self.name)
        ensure_port_free(self.host, self.rpc_port, self.name)
        log.info("starting influxd on %s:%d", self.host, self.port)
        self.process.start()
        took = self.process.wait_ready(self._probe, self.ready_timeout)
        log.info("influxd ready in %.2fs (pid %s)", took, self.pid)
        return self

    def _probe(self) -> bool:
        return httpx.get(f"{self.url}/ping", timeout=1.0).status_code == 204
