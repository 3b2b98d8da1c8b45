"""A resolved compose file's services run here as local processes, each with its exact
command and environment, its named volumes as temp dirs (shared by name, as Docker does),
its container paths, host names and listen ports rewritten to this machine's.

The rewriting is per service (two brokers mount different volumes at the same
`/mosquitto/config`); each broker service gets a plain and a TLS port of its own, which
is what `mosquitto:1883` / `region-mosquitto:8883` mean to the services that name them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from broker import dynsec, guard
from control.processes import ManagedProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
RUN_SECRETS = "/run/secrets"
SECRET_FILES = {
    "influx_admin_password": "compose-admin-'pw",
    "influx_password": "compose-user-pw",
    "grafana_admin_password": "compose-grafana-pw",
    "grafana_webhook_key": "not-a-real-key",
    "grafana_oidc_client_secret": "",
}
"""What scripts/compose-secrets.sh writes (random there; fixed here)."""


def compose_config(
    *files: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` on the repository's `files` (merged in order), with exactly
    `env` (and PATH)."""
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose missing: `make test` installs the Debian package"
    return subprocess.run(
        [binary, *(arg for f in files for arg in ("-f", str(f))), "--project-directory",
         str(ROOT), "config"],
        env={"PATH": os.environ["PATH"], **(env or {})}, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


def command_of(service: dict[str, Any]) -> list[str]:
    """A service's command as argv."""
    command = service["command"]
    return command if isinstance(command, list) else command.split()


def api_key(api_env: dict[str, str], cwd: Path, name: str, scopes: str) -> str:
    """A new API key, made with an API service's own environment as an operator would
    (`docker compose exec api safecity apikey create ...`)."""
    made = subprocess.run(
        [sys.executable, "-m", "control", "apikey", "create", "--name", name, "--scopes", scopes],
        env=api_env, cwd=cwd, capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return made.stdout.strip().removeprefix("SAFECITY_API_KEY=")


class ComposeHost:
    """Rewrites and runs the services of one resolved compose file on this machine."""

    def __init__(self, tmp: Path, resolved: dict[str, Any], influx_port: int) -> None:
        self.tmp = tmp
        self.services: dict[str, dict[str, Any]] = resolved["services"]
        self.influx = f"http://127.0.0.1:{influx_port}"
        self.brokers = {
            name: (free_port(), free_port())
            for name, s in self.services.items()
            if str(s.get("image", "")).startswith(("eclipse-mosquitto", "safecity-mosquitto"))
        }
        self._ports: dict[tuple[str, int], int] = {}
        self.started: list[ManagedProcess] = []
        # The secret files scripts/compose-secrets.sh makes, where compose mounts them.
        (tmp / "run-secrets").mkdir(exist_ok=True)
        for name, value in SECRET_FILES.items():
            (tmp / "run-secrets" / name).write_text(value)
        for name in self.services:
            for local in self.paths(name).values():
                if not local.endswith(".conf") and not Path(local).is_file():  # files stay files
                    Path(local).mkdir(parents=True, exist_ok=True)

    def paths(self, name: str) -> dict[str, str]:
        """Container path -> local path, for one service's mounts."""
        out = {RUN_SECRETS: str(self.tmp / "run-secrets")}
        for volume in self.services[name].get("volumes", []):
            source, target = volume.split(":")[:2]
            bind = source.startswith(("/", "."))
            out[target] = str((ROOT / source).resolve()) if bind else str(self.tmp / source)
        return out

    def port(self, name: str, container_port: int) -> int:
        """The local port standing for a service's container port."""
        return self._ports.setdefault((name, container_port), free_port())

    def rewrite(self, name: str, text: str) -> str:
        """A service's text (a command word, a setting, a config file) made local."""
        for container, local in sorted(self.paths(name).items(), key=lambda kv: -len(kv[0])):
            text = text.replace(container, local)
        for broker, (plain, tls) in self.brokers.items():
            # Over TLS the name the broker's certificate carries (`localhost`).
            text = re.sub(rf"(?<![\w-]){broker}:8883", f"localhost:{tls}", text)
            text = re.sub(rf"(?<![\w-]){broker}:1883", f"127.0.0.1:{plain}", text)
        text = re.sub(
            r"http://127\.0\.0\.1:(\d+)",
            lambda m: f"http://127.0.0.1:{self.port(name, int(m.group(1)))}",
            text,
        )
        return text.replace("http://influxdb:8086", self.influx)

    def env(self, name: str, **extra: str) -> dict[str, str]:
        """A service's environment made local (and `extra`, e.g. shorter intervals)."""
        environment = {**self.services[name].get("environment", {}), **extra}
        out = {k: v for k, v in os.environ.items() if not k.startswith("SAFECITY_")}
        broker = str(environment.get("SAFECITY_MQTT__HOST", ""))
        tls = str(environment.get("SAFECITY_MQTT__PORT")) == "8883"
        for key, value in environment.items():
            value = self.rewrite(name, str(value))
            if key == "SAFECITY_MQTT__HOST" and value in self.brokers:
                value = "localhost" if tls else "127.0.0.1"
            elif key == "SAFECITY_MQTT__PORT" and broker in self.brokers:
                value = str(self.brokers[broker][1 if tls else 0])
            elif re.fullmatch(r"SAFECITY_(\w*_)?PORT", key):
                value = str(self.port(name, int(value)))
            elif re.fullmatch(r"SAFECITY_\w*HOST", key) and value == "0.0.0.0":
                value = "127.0.0.1"  # inside a container: its network; here: loopback
            out[key] = value
        out["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
        return out

    def run_one_shot(self, name: str) -> None:
        """A one-shot service (provisioning, storage set-up), to its successful end."""
        command = [self.rewrite(name, word) for word in command_of(self.services[name])]
        result = subprocess.run(
            command, env=self.env(name), cwd=self.tmp, capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"{name}: {result.stdout}\n{result.stderr}"

    def healthy(self, name: str, env: dict[str, str]) -> bool:
        """The service's own compose health check, run here."""
        test = self.services[name]["healthcheck"]["test"]
        if test[0] == "CMD-SHELL":
            argv = ["sh", "-c", self.rewrite(name, test[1])]
        else:
            argv = [self.rewrite(name, word) for word in test[1:]]
        run = subprocess.run(argv, env=env, capture_output=True, timeout=20, check=False)
        return run.returncode == 0

    def start_broker(self, name: str) -> ManagedProcess:
        """A broker service on the config its provisioning rendered, made local."""
        plain, tls = self.brokers[name]
        paths = self.paths(name)
        text = self.rewrite(name, Path(paths["/mosquitto/config"], "mosquitto.conf").read_text())
        text = re.sub(r"^listener 1883$", f"listener {plain} 127.0.0.1", text, flags=re.M)
        # Over TLS clients use `localhost` (the certificate's name), which a standard Debian
        # resolves to ::1 first; a Mosquitto bridge tries only that first address, so the
        # listener takes every address of the name.
        text = re.sub(r"^listener 8883 \S+$", f"listener {tls} localhost", text, flags=re.M)
        text = text.replace("log_dest stdout", f"log_dest file {self.tmp / f'{name}.log'}")
        # The image's plugin path -> where this host's Mosquitto package installed it.
        text = text.replace(dynsec.CONTAINER_PLUGIN, dynsec.find_plugin())
        text = text.replace(guard.CONTAINER_GUARD, guard.find_guard())
        conf = self.tmp / f"{name}-local.conf"
        conf.write_text(f"user {os.environ.get('USER', 'root')}\n" + text)
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        broker = ManagedProcess(name, [binary, "-c", str(conf)], self.tmp / f"{name}.stdout.log")
        check = self.services[name]["healthcheck"]["test"][1].replace("-p 1883", f"-p {plain}")
        broker.start()
        self.started.append(broker)
        broker.wait_ready(
            lambda: subprocess.run(["sh", "-c", check], timeout=10, check=False).returncode == 0,
            30,
        )
        return broker

    def start(self, name: str, **extra: str) -> dict[str, str]:
        """A long-running service, until its compose health check passes; its environment."""
        env = self.env(name, **extra)
        command = [self.rewrite(name, word) for word in command_of(self.services[name])]
        proc = ManagedProcess(name, command, self.tmp / f"{name}.log", cwd=self.tmp, env=env)
        proc.start()
        self.started.append(proc)
        proc.wait_ready(lambda: self.healthy(name, env), 60)
        return env

    def stop_all(self) -> None:
        """Stop every started process, the last started first; idempotent."""
        for proc in reversed(self.started):
            proc.stop(10)
        self.started.clear()
