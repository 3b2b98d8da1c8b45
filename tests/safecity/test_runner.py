"""`safecity run` (what `make run` starts): the stack comes up, serves data, stops clean."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from safecity.registry import default_city


def _children_of(pid: int) -> set[int]:
    """All descendants of pid, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_run_serves_every_device_then_ctrl_c_leaves_nothing_behind(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFECITY_")}
    env["SAFECITY_INGEST_METRICS_PORT"] = "0"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "safecity",
            "run",
            "--data-dir",
            str(tmp_path),
            "--api-port",
            "0",
            "--mqtt-port",
            "0",
            "--influx-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        api = None
        key = ""
        lines = []
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while api is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if match := re.search(r"SAFECITY_API_KEY=(\S+)", line):
                key = match.group(1)
            if match := re.search(r"console \+ API\s+(http://\S+?)/\s", line):
                api = match.group(1)
        assert api, "no console URL printed:\n" + "".join(lines)
        assert key.startswith("sck_"), "no SAFECITY_API_KEY printed:\n" + "".join(lines)
        children = _children_of(proc.pid)
        assert len(children) >= 5  # mosquitto, influxd, ingest, api, simulator

        city = default_city()
        missing = {d.id for d in city.devices}
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=api, timeout=5, headers={"X-API-Key": key}) as client:
            while missing and time.monotonic() < deadline:
                for device_id in sorted(missing):
                    if client.get(f"/v1/devices/{device_id}/latest").status_code == 200:
                        missing.discard(device_id)
                time.sleep(0.5)
        assert missing == set(), f"{len(missing)} devices without a latest reading"

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        left = [pid for pid in children if _alive(pid)]
        assert left == [], f"processes left behind: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
