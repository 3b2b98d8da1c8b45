"""`safecity ingest --workers N`: N worker processes with stable ids, restarted if they die.

Each worker is a separate `python -m ingest --worker-id <id>-<i>` process
(its own GIL, MQTT session and spool), all on the same shared subscription; the
metrics port of worker i is the base port + i (0 stays 0: any free port). Only worker 0
follows the broker's $SYS counter and its log: both are broker-wide, and N followers
would count every drop N times in `ingest_stats` (broker-log events would only overwrite
each other, but one reader is enough).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from ingest.settings import IngestSettings
from safecity.errors import ConfigError

log = logging.getLogger("safecity.ingest.supervisor")

RESTART_DELAY = 1.0
STOP_TIMEOUT = 15.0


def worker_ids(base: str, count: int) -> list[str]:
    """The stable ids of `count` workers: <base>-0 .. <base>-(count-1)."""
    return [f"{base}-{i}" for i in range(count)]


def supervise(settings: IngestSettings, count: int, registry: Sequence[Path]) -> int:
    """Run `count` workers until SIGINT/SIGTERM, restarting any that exits; return 0."""
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if count > 1 and not settings.share_group:
        raise ConfigError(
            f"--workers {count} needs a shared subscription: set SAFECITY_SHARE_GROUP"
        )
    ids = worker_ids(settings.worker_id, count)
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(index: int, worker: str) -> None:
        env = dict(os.environ)
        env["SAFECITY_WORKER_ID"] = worker
        if settings.metrics_port:
            env["SAFECITY_METRICS_PORT"] = str(settings.metrics_port + index)
        if index > 0:
            env["SAFECITY_BROKER_SYS"] = "false"
            env["SAFECITY_BROKER_LOG"] = ""
        argv = [sys.executable, "-m", "ingest", "--worker-id", worker]
        if registry:
            argv += ["--registry", json.dumps([str(p) for p in registry])]
        procs[worker] = subprocess.Popen(argv, env=env)
        log.info("worker started", extra={"worker": worker, "pid": procs[worker].pid})

    for index, worker in enumerate(ids):
        spawn(index, worker)
    while not stopping:
        time.sleep(0.2)
        for index, worker in enumerate(ids):
            code = procs[worker].poll()
            if code is not None and not stopping:
                log.warning(
                    "worker exited; restarting it (same id: its session is resumed)",
                    extra={"worker": worker, "status": code, "delay_s": RESTART_DELAY},
                )
                time.sleep(RESTART_DELAY)
                spawn(index, worker)
    _stop(procs)
    log.info("all workers stopped", extra={"workers": len(ids)})
    return 0


def _stop(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """SIGTERM every worker; kill one that has not stopped within STOP_TIMEOUT."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for worker, proc in procs.items():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("worker ignored SIGTERM; killing it", extra={"worker": worker})
            proc.kill()
            proc.wait()
