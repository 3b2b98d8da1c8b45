"""`safecity run` in a temporary SAFECITY_HOME, and commands typed beside it (subprocesses)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from support import wait_for

from safecity import instance
from safecity.registry import City

ROOT = Path(__file__).resolve().parents[2]


def beside(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a command typed beside the run: SAFECITY_HOME (and `extra`) only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFECITY_")}
    env["SAFECITY_HOME"] = str(home)
    env.update(extra)
    return env


def safecity(home: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`safecity ARGS` from the checkout, as a user would type it beside `make run`."""
    return subprocess.run(
        [sys.executable, "-m", "control", *args],
        env=beside(home),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass(frozen=True)
class Run:
    """A started `safecity run`: its home, what it printed up to "Press Ctrl-C", its state."""

    home: Path
    printed: str
    state: instance.Running
    process: subprocess.Popen[str]
    """The launcher (a test may stop it itself: Ctrl-C is SIGINT)."""

    @property
    def layout(self) -> instance.Layout:
        """The instance layout of the run's home."""
        return instance.layout(self.home)


def launch(home: Path, *argv: str, **env: str) -> subprocess.Popen[str]:
    """`safecity run` on free ports in `home` (extra flags `argv`, settings `env`), its
    output (stdout and stderr) on a pipe."""
    full = beside(
        home,
        SAFECITY_INGEST_METRICS_PORT="0",
        SAFECITY_ALERTS_METRICS_PORT="0",
        SAFECITY_NOTIFY_METRICS_PORT="0",
        SAFECITY_ROLLUP_METRICS_PORT="0",
        **env,
    )
    ports = ["--api-port", "0", "--mqtt-port", "0", "--influx-port", "0", "--mqtt-tls-port", "0"]
    return subprocess.Popen(
        [sys.executable, "-m", "control", "run", *ports, *argv],
        env=full,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def until_ready(proc: subprocess.Popen[str], timeout: float = 240) -> str:
    """What a launched run printed up to its "Press Ctrl-C" line (or until it exited or
    `timeout` passed: the caller's assertions then show what it printed instead)."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while "Press Ctrl-C" not in "".join(lines[-1:]) and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break  # the launcher gave up: its output says why
        lines.append(line)
    return "".join(lines)


@contextmanager
def local_run(home: Path, *argv: str, **env: str) -> Iterator[Run]:
    """`safecity run` on free ports in `home` (extra flags `argv`, settings `env`); stopped
    with Ctrl-C (SIGINT) at the end."""
    proc = launch(home, *argv, **env)
    try:
        printed = until_ready(proc)
        state = instance.running(instance.layout(home))
        assert "Press Ctrl-C" in printed and state is not None, printed
        yield Run(home, printed, state, proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(2)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def progress_lines(run: Run) -> list[dict[str, object]]:
    """The simulator's "simulator progress" log records of the run so far."""
    path = run.home / "simulate.log"
    if not path.exists():
        return []
    found = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if '"simulator progress"' in line:
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


def acked_since(run: Run, offset: int, device_id: str) -> bool:
    """Whether the ledger holds, after byte `offset`, a message of the device the broker
    accepted (PUBACK < 0x80)."""
    with run.layout.ledger_file.open("rb") as handle:
        handle.seek(offset)
        data = handle.read()
    return any(
        re.search(rb'"d":"' + device_id.encode() + rb'"', line) and json.loads(line)["p"] < 0x80
        for line in data.split(b"\n")[:-1]
        if line.strip()
    )


def every_device_has_a_latest_reading(api: str, key: str, city: City, within: float) -> None:
    """Wait until `GET /v1/devices/{id}/latest` answers 200 for every device of the city."""
    missing = {d.id for d in city.devices}
    with httpx.Client(base_url=api, timeout=5, headers={"X-API-Key": key}) as client:

        def none_missing() -> bool:
            for device_id in sorted(missing):
                if client.get(f"/v1/devices/{device_id}/latest").status_code == 200:
                    missing.discard(device_id)
            return not missing

        wait_for(none_missing, within, "a latest reading of every device", interval=0.5)
