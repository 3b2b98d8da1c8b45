"""`safecity ingest --workers N`: the supervisor starts its workers as `python -m ingest`."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from support import account_env, wait_for

from control.stack import LocalStack, ManagedProcess


def _two_free_ports() -> int:
    """A port p with p and p + 1 free (worker i serves metrics on base + i)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise AssertionError("no two consecutive free ports")


def _children(pid: int) -> list[str]:
    """Command lines of the direct children of pid."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if ppid == pid:
            out.append(cmdline)
    return out


def test_supervised_workers_run_as_python_m_ingest(
    stack: LocalStack, influx_db: str, tmp_path: Path
) -> None:
    port = _two_free_ports()
    base = f"w{secrets.token_hex(3)}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFECITY_")}
    env.update(
        {
            "SAFECITY_HOME": str(tmp_path / "home"),
            "SAFECITY_MQTT__HOST": stack.mqtt_host,
            "SAFECITY_MQTT__PORT": str(stack.mqtt_port),
            "SAFECITY_INFLUX__URL": stack.influx_url,
            "SAFECITY_INFLUX__DATABASE": influx_db,
            "SAFECITY_WORKER_ID": base,
            "SAFECITY_SHARE_GROUP": f"g{secrets.token_hex(4)}",
            "SAFECITY_METRICS_PORT": str(port),
            **account_env(stack, "ingest"),
        }
    )
    proc = ManagedProcess(
        "supervisor",
        [sys.executable, "-m", "control", "ingest", "--workers", "2"],
        tmp_path / "supervisor.log",
        env=env,
    )
    proc.start()
    try:
        ready: set[int] = set()

        def both_ready() -> bool:
            for p in (port, port + 1):
                try:
                    if httpx.get(f"http://127.0.0.1:{p}/readyz", timeout=2).status_code == 200:
                        ready.add(p)
                except httpx.HTTPError:
                    pass
            return len(ready) == 2

        wait_for(both_ready, 90, f"both workers ready: {proc.log_tail()}", interval=0.5)
        assert proc.pid is not None
        workers = _children(proc.pid)
        assert sorted(w.split(" -m ", 1)[1].strip() for w in workers) == [
            f"ingest --worker-id {base}-0",
            f"ingest --worker-id {base}-1",
        ]
    finally:
        proc.stop(timeout=30)
    assert not proc.alive


def test_python_m_ingest_is_the_ingest_command(tmp_path: Path) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "ingest", "--help"], capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0 and "--worker-id" in shown.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "ingest"],
        env={"PATH": "/usr/bin:/bin", "SAFECITY_MQTT__PORT": "abc"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("safecity: error: invalid setting SAFECITY_MQTT__PORT")
