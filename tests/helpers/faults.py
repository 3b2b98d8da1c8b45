"""Ingest fault-test helpers: ingest as a real child process, metrics scraping, the checker."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from pathlib import Path

import httpx
from support import wait_for

from control.stack import LocalStack, ManagedProcess, free_port, http_ok
from control.verify import Report, verify
from safecity.influx import InfluxClient
from safecity.settings import InfluxSettings

CRASH_LAUNCHER = Path(__file__).with_name("crash_ingest.py")
POISON_LAUNCHER = Path(__file__).with_name("poison_service.py")
NORMAL = ("-m", "control", "ingest")

# Fast failure detection for tests: short InfluxDB timeouts, short backoff, quick spooling.
FAST = {
    "SAFECITY_INFLUX__TIMEOUT": "2",
    "SAFECITY_RETRY_MAX_DELAY": "1",
    "SAFECITY_SPOOL_AFTER": "1",
    "SAFECITY_RATE_LIMIT": "10000",
    "SAFECITY_RATE_BURST": "100000",
    "SAFECITY_LOG_LEVEL": "INFO",
    # Sessions of finished tests must not linger in the shared broker for a day.
    "SAFECITY_SESSION_EXPIRY": "60",
}


class Ingest:
    """One ingest worker as `python -m control ingest`, restartable with the same id."""

    def __init__(self, stack: LocalStack, db: str, tmp: Path, worker: str, **env: str) -> None:
        self.worker = worker
        self.port = free_port()
        self.deadletter_dir = tmp / "deadletter"
        self.spool_dir = tmp / "spool"
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("SAFECITY_") or k == "SAFECITY_HOME"
        }
        self.env.update(
            {
                "SAFECITY_MQTT__HOST": stack.mqtt_host,
                "SAFECITY_MQTT__PORT": str(stack.mqtt_port),
                # Its own account: reads telemetry, writes dead letters and its status.
                "SAFECITY_MQTT__USERNAME": "_ingest",
                "SAFECITY_MQTT__PASSWORD": stack.secret("_ingest"),
                "SAFECITY_INFLUX__URL": stack.influx_url,
                "SAFECITY_INFLUX__DATABASE": db,
                "SAFECITY_WORKER_ID": worker,
                "SAFECITY_METRICS_PORT": str(self.port),
                "SAFECITY_DEADLETTER_DIR": str(self.deadletter_dir),
                "SAFECITY_SPOOL_DIR": str(self.spool_dir),
                # Own share group per database: other tests' sessions must not get a share.
                "SAFECITY_SHARE_GROUP": f"g-{db}",
                **FAST,
                **env,
            }
        )
        self.log_path = tmp / f"{worker}.log"
        self.process = ManagedProcess(
            f"ingest-{worker}",
            [sys.executable, "-m", "control", "ingest"],
            self.log_path,
            env=self.env,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(
        self,
        wait_ready: bool = True,
        *,
        unset: tuple[str, ...] = (),
        crash_after_write: int = 0,
        poison: tuple[str, str] | None = None,
        **env: str,
    ) -> Ingest:
        """Start (or restart) the worker with `env` added and the `unset` variables removed;
        with `crash_after_write` N through the launcher that SIGKILLs it after N durable
        writes, before their acks; with `poison` (stage, marker) through the one whose
        stage raises on every message holding the marker."""
        launcher: tuple[str, ...] = NORMAL
        if crash_after_write:
            launcher = (str(CRASH_LAUNCHER), str(crash_after_write))
        elif poison is not None:
            launcher = (str(POISON_LAUNCHER), *poison, "ingest")
        self.process.argv = [sys.executable, *launcher]
        self.env.update(env)
        for key in unset:
            self.env.pop(key, None)
        self.process.env = self.env
        self.process.start()
        if wait_ready:
            self.process.wait_ready(self._ready, 30)
        return self

    def _ready(self) -> bool:
        return http_ok(f"{self.url}/readyz")()

    def kill(self) -> None:
        self.process.kill()

    def stop(self) -> None:
        self.process.stop(timeout=15)

    def metrics(self) -> dict[str, float]:
        """Current metric samples, keyed by `name{labels}`."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def metric(self, name: str) -> float:
        """Sum of all samples of `name` (any labels); 0 if absent."""
        return sum(v for k, v in self.metrics().items() if k == name or k.startswith(name + "{"))


def check(stack: LocalStack, db: str, ledger: Path, *deadletter_dirs: Path) -> Report:
    """Run the ledger checker against this stack's InfluxDB."""

    async def main() -> Report:
        client = InfluxClient(InfluxSettings(url=stack.influx_url, database=db))
        try:
            return await verify(ledger, client, list(deadletter_dirs))
        finally:
            await client.close()

    return asyncio.run(main())


def settled_check(
    stack: LocalStack, db: str, ledger: Path, *deadletter_dirs: Path, timeout: float = 30
) -> Report:
    """`check` once the ingest has written everything acknowledged (nothing lost, waited
    for up to `timeout` s: what a broker acknowledged last is written a moment later),
    printed; the report of the last try."""
    box: dict[str, Report] = {}

    def settled() -> bool:
        box["r"] = check(stack, db, ledger, *deadletter_dirs)
        return not box["r"].lost

    try:
        wait_for(settled, timeout, "every acknowledged message in InfluxDB")
    finally:
        print(box["r"].render() if "r" in box else "no report")
    return box["r"]


def new_db(stack: LocalStack) -> str:
    """A fresh database name on the stack (ingest creates it)."""
    return f"t_{secrets.token_hex(5)}"
