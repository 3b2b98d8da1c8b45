"""Run docker-compose.yml for real under podman, without Docker Hub or a Docker engine.

    python deploy/local/podman_stack.py build            # local images (cached)
    python deploy/local/podman_stack.py up [--scale ingest=3]
    python deploy/local/podman_stack.py check            # every service healthy, 0 restarts
    python deploy/local/podman_stack.py down             # containers, volumes, network

Images: a Debian bookworm base made by mmdebstrap from the host's Debian mirror (with
the host's local CA certificates), stand-ins for the Python, Mosquitto and InfluxDB
images built on it from Debian packages, and the project's Dockerfile built on the
Python stand-in with the host's pip index settings. The stack: podman-compose with
docker-compose.yml plus deploy/local/compose.podman.yml, started one dependency level
at a time, because podman 4.3 neither resolves `depends_on` conditions more than one
level deep nor, without systemd, runs health checks: this driver runs them itself
(`podman healthcheck run`) and waits for one-shot services to exit 0.

Podman's own state (storage, runtime files, containers.conf) lives under
$SAFECITY_PODMAN_DIR (default ~/.cache/safecity-podman), so nothing in /etc changes and
the base images stay cached between runs. Errors name the service at fault.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
COMPOSE_FILES = (ROOT / "docker-compose.yml", HERE / "compose.podman.yml")
DEFAULT_STATE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "safecity-podman"
DEFAULT_PROJECT = "safecity"
SUITE = "bookworm"
BASE_IMAGE = f"localhost/safecity-local/debian:{SUITE}"
PYTHON_IMAGE = f"localhost/safecity-local/python:3.11-{SUITE}"
# Stand-in image -> its Containerfile under deploy/local/images.
STANDINS = {
    PYTHON_IMAGE: "python.Containerfile",
    f"localhost/safecity-local/mosquitto:{SUITE}": "mosquitto.Containerfile",
    f"localhost/safecity-local/influxdb:{SUITE}": "influxdb.Containerfile",
}
PIP_SETTINGS = ("index-url", "extra-index-url", "trusted-host")
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
COMPLETED = "service_completed_successfully"


class StackError(RuntimeError):
    """The stack could not be built, started or checked; the message names the service."""


def log(message: str) -> None:
    """Progress on stderr (stdout carries `check`'s JSON)."""
    print(f"podman-stack: {message}", file=sys.stderr, flush=True)


class Podman:
    """podman and podman-compose with this project's private state and settings."""

    def __init__(self, state: Path, project: str, env_overrides: dict[str, str]) -> None:
        self.state = state
        self.project = project
        self.env = {**os.environ, **env_overrides, **self._configure(state)}

    @staticmethod
    def _configure(state: Path) -> dict[str, str]:
        # runc: the default crun fails on this kernel's cgroup v1 layout. Explicit limits:
        # podman's defaults (1M open files) exceed what an unprivileged-in-the-VM root may
        # set, so take the host's hard limits (processes also capped by the pid space).
        state.mkdir(parents=True, exist_ok=True)
        nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
        nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text().strip())
        nproc = pid_max if nproc == resource.RLIM_INFINITY else min(nproc, pid_max)
        conf = state / "containers.conf"
        conf.write_text(
            "[containers]\n"
            f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
        )
        storage = state / "storage.conf"
        storage.write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{state / "storage"}"\n'
            f'runroot = "{state / "run"}"\n'
        )
        return {"CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage)}

    def run(
        self, *args: str, check: bool = True, timeout: float = 900
    ) -> subprocess.CompletedProcess[str]:
        """podman ARGS, output captured."""
        return self._run(["podman", *args], check=check, timeout=timeout)

    def compose(
        self, *args: str, check: bool = True, timeout: float = 900
    ) -> subprocess.CompletedProcess[str]:
        """podman-compose with both compose files, no pod (as Docker: one network)."""
        binary = shutil.which("podman-compose") or str(
            Path(sys.executable).parent / "podman-compose"
        )
        files = [a for f in COMPOSE_FILES for a in ("-f", str(f))]
        cmd = [binary, "--in-pod", "false", "-p", self.project, *files, *args]
        return self._run(cmd, check=check, timeout=timeout)

    def _run(self, cmd: list[str], check: bool, timeout: float) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise StackError(f"{' '.join(cmd[:4])} ... failed:\n{result.stderr[-3000:]}")
        return result

    def image_exists(self, name: str) -> bool:
        """Whether the private storage holds image NAME."""
        return self.run("image", "exists", name, check=False).returncode == 0


# --- images -------------------------------------------------------------------------


def host_pip_settings() -> dict[str, str]:
    """The host's pip index settings as PIP_* build args (local file:// indexes dropped)."""
    found: dict[str, str] = {}
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    for line in listing.splitlines():
        match = re.match(r"^[^.]+\.([a-z-]+)='(.*)'$", line.strip())
        if match and match.group(1) in PIP_SETTINGS:
            found[match.group(1)] = match.group(2)
    for key in PIP_SETTINGS:
        env = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        if env:
            found[key] = env
    args: dict[str, str] = {}
    for key, value in found.items():
        if key != "trusted-host":
            value = " ".join(u for u in value.split() if u.startswith(("http://", "https://")))
        if value:
            args["PIP_" + key.upper().replace("-", "_")] = value
    if os.environ.get("PIP_CERT") or "cert=" in listing.replace("'", ""):
        # The base image trusts the host's CAs; pip must use that bundle, not its own.
        args["PIP_CERT"] = "/etc/ssl/certs/ca-certificates.crt"
    return args


def debian_sources() -> Path | None:
    """The host's Debian sources (deb822), so the base uses the same mirror."""
    path = Path("/etc/apt/sources.list.d/debian.sources")
    return path if path.exists() else None


def build_base(podman: Podman) -> None:
    """A Debian base with the host's local CAs, by mmdebstrap; kept once made."""
    if podman.image_exists(BASE_IMAGE):
        return
    if not shutil.which("mmdebstrap"):
        raise StackError("mmdebstrap missing: `scripts/setup.sh --test` installs it")
    log(f"making {BASE_IMAGE} with mmdebstrap (once)")
    with tempfile.TemporaryDirectory(dir=podman.state) as tmp:
        tar = Path(tmp) / "base.tar"
        cmd = [
            "mmdebstrap",
            "--quiet",
            "--variant=minbase",
            "--include=ca-certificates",
            "--dpkgopt=force-unsafe-io",
            '--aptopt=Acquire::Languages "none"',
        ]
        if HOST_CA_DIR.is_dir() and any(HOST_CA_DIR.iterdir()):
            cmd += [
                f"--customize-hook=sync-in {HOST_CA_DIR} {HOST_CA_DIR}",
                '--customize-hook=chroot "$1" update-ca-certificates',
            ]
        cmd += [SUITE, str(tar)]
        sources = debian_sources()
        if sources:
            cmd.append(str(sources))
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise StackError(f"mmdebstrap failed:\n{result.stderr[-3000:]}")
        podman.run("import", "--change", 'CMD ["bash"]', str(tar), BASE_IMAGE)


def build_images(podman: Podman, config: dict[str, Any]) -> None:
    """Every image the stack needs; podman's layer cache makes repeats cheap."""
    build_base(podman)
    procs = {
        image: subprocess.Popen(
            [
                "podman",
                "build",
                "-q",
                "--layers",
                "-f",
                str(HERE / "images" / name),
                "-t",
                image,
                str(HERE / "images"),
            ],
            cwd=ROOT,
            env=podman.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for image, name in STANDINS.items()
    }
    for image, proc in procs.items():
        _, err = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise StackError(f"building {image} failed:\n{err[-3000:]}")
    built: set[str] = set()
    for name, service in sorted(config["services"].items()):
        build = service.get("build")
        if not build or service["image"] in built:
            continue
        context = build["context"] if isinstance(build, dict) else build
        dockerfile = (
            build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
        )
        args = {"PYTHON_IMAGE": PYTHON_IMAGE, **host_pip_settings()}
        log(f"building {service['image']} for {name} from {dockerfile}")
        cmd = [
            "build",
            "-q",
            "--layers",
            "-t",
            service["image"],
            "-f",
            str(Path(context) / dockerfile),
        ]
        for key, value in args.items():
            cmd += ["--build-arg", f"{key}={value}"]
        podman.run(*cmd, context)
        built.add(service["image"])


# --- ordered start ------------------------------------------------------------------


def resolved_config(podman: Podman) -> dict[str, Any]:
    """The merged compose model, as podman-compose sees it."""
    config: dict[str, Any] = yaml.safe_load(podman.compose("config").stdout)
    return config


def active_services(config: dict[str, Any], profiles: Iterable[str] = ()) -> dict[str, Any]:
    """Services without a profile, or in one of PROFILES."""
    wanted = set(profiles)
    return {
        name: service
        for name, service in config["services"].items()
        if not service.get("profiles") or wanted & set(service["profiles"])
    }


def dependency_levels(services: dict[str, Any]) -> list[list[str]]:
    """Services grouped so each group depends only on earlier groups."""
    deps = {name: set(s.get("depends_on") or {}) & set(services) for name, s in services.items()}
    levels: list[list[str]] = []
    placed: set[str] = set()
    while len(placed) < len(deps):
        level = sorted(n for n, d in deps.items() if n not in placed and d <= placed)
        if not level:
            raise StackError(f"depends_on cycle among {sorted(set(deps) - placed)}")
        levels.append(level)
        placed.update(level)
    return levels


def is_one_shot(services: dict[str, Any], name: str) -> bool:
    """A service others wait on to complete (compose `service_completed_successfully`)."""
    return any(
        (rule or {}).get("condition") == COMPLETED
        for s in services.values()
        for dep, rule in (s.get("depends_on") or {}).items()
        if dep == name
    )


def seconds(value: str | int | float | None, default: float) -> float:
    """A compose duration (`1m30s`, `5s`, `500ms`) in seconds."""
    if value is None:
        return default
    if isinstance(value, (int, float)):
        return float(value)
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)(ms|us|h|m|s)", value):
        total += float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    return total


def containers(podman: Podman, service: str | None = None) -> list[dict[str, Any]]:
    """This project's containers (of SERVICE), with podman's inspect data."""
    cmd = ["ps", "-a", "-q", "--filter", f"label=io.podman.compose.project={podman.project}"]
    if service:
        cmd += ["--filter", f"label=com.docker.compose.service={service}"]
    ids = podman.run(*cmd).stdout.split()
    if not ids:
        return []
    found: list[dict[str, Any]] = json.loads(podman.run("inspect", *ids).stdout)
    return sorted(found, key=lambda c: str(c["Name"]))


def service_of(container: dict[str, Any]) -> str:
    """The compose service a container belongs to."""
    return str(container["Config"]["Labels"]["com.docker.compose.service"])


def logs_tail(podman: Podman, name: str, lines: int = 30) -> str:
    """The last LINES of a container's output, for error messages."""
    result = podman.run("logs", "--tail", str(lines), name, check=False)
    return (result.stdout + result.stderr).strip()


def wait_completed(podman: Podman, service: str, timeout: float) -> None:
    """Wait for every container of a one-shot SERVICE to exit 0."""
    for container in containers(podman, service):
        name = container["Name"]
        result = podman.run("wait", name, check=False, timeout=timeout)
        code = result.stdout.strip()
        if result.returncode != 0 or code != "0":
            raise StackError(
                f"service {service}: {name} exited {code or '?'} "
                f"(must complete successfully):\n{logs_tail(podman, name)}"
            )


def wait_healthy(podman: Podman, service: str, spec: dict[str, Any], floor: float) -> None:
    """Run SERVICE's health check until every container passes, as compose would."""
    budget = seconds(spec.get("start_period"), 0) + seconds(spec.get("interval"), 30) * int(
        spec.get("retries", 3)
    )
    deadline = time.monotonic() + max(budget, floor)
    pending = {c["Name"] for c in containers(podman, service)}
    if not pending:
        raise StackError(f"service {service}: no container was started")
    while pending:
        for name in sorted(pending):
            state = json.loads(podman.run("inspect", name).stdout)[0]["State"]
            if not state["Running"]:
                raise StackError(
                    f"service {service}: {name} is {state['Status']} (exit "
                    f"{state['ExitCode']}), not healthy:\n{logs_tail(podman, name)}"
                )
            if podman.run("healthcheck", "run", name, check=False).returncode == 0:
                pending.discard(name)
        if pending and time.monotonic() > deadline:
            names = ", ".join(sorted(pending))
            last = logs_tail(podman, sorted(pending)[0])
            raise StackError(f"service {service}: {names} not healthy in time:\n{last}")
        if pending:
            time.sleep(1)


def up(podman: Podman, scale: Sequence[str], profiles: Sequence[str], floor: float) -> None:
    """Start the stack one dependency level at a time, each level healthy or complete."""
    config = resolved_config(podman)
    services = active_services(config, profiles)
    for name in services:
        image = services[name].get("image", "")
        if not podman.image_exists(image):
            raise StackError(f"service {name}: image {image} missing; run `build` first")
    scale_args = [a for s in scale for a in ("--scale", s)]
    for level in dependency_levels(services):
        log(f"starting {', '.join(level)}")
        podman.compose("up", "-d", "--no-deps", "--no-build", *scale_args, *level)
        for name in level:
            spec = services[name].get("healthcheck") or {}
            if is_one_shot(services, name):
                wait_completed(podman, name, timeout=max(floor, 300))
            elif spec.get("test") and not spec.get("disable"):
                wait_healthy(podman, name, spec, floor)
    log("every service is up")


def check(podman: Podman) -> list[dict[str, Any]]:
    """Every long-running container healthy and never restarted; one-shots exited 0."""
    found = containers(podman)
    if not found:
        raise StackError(f"project {podman.project} has no containers")
    report, problems = [], []
    for container in found:
        name, state = container["Name"], container["State"]
        service = service_of(container)
        restarts = int(container.get("RestartCount", 0))
        entry = {"service": service, "container": name, "restarts": restarts}
        report.append(entry)
        if restarts:
            problems.append(f"service {service}: {name} restarted {restarts} time(s)")
        policy = (container["HostConfig"].get("RestartPolicy") or {}).get("Name", "")
        if policy in ("", "no"):  # a one-shot: must have run to a clean exit
            entry["status"] = "completed"
            if state["Status"] != "exited" or state["ExitCode"] != 0:
                problems.append(
                    f"service {service}: {name} is {state['Status']} (exit "
                    f"{state['ExitCode']}), not completed successfully"
                )
        elif state["Status"] != "running":
            problems.append(f"service {service}: {name} is {state['Status']}, not running")
        elif container["Config"].get("Healthcheck"):
            entry["status"] = "healthy"
            if podman.run("healthcheck", "run", name, check=False).returncode != 0:
                problems.append(
                    f"service {service}: {name} is unhealthy:\n{logs_tail(podman, name, 10)}"
                )
        else:
            entry["status"] = "running"
    if problems:
        raise StackError("\n".join(problems))
    return report


def down(podman: Podman) -> None:
    """Remove the project's containers, volumes and network."""
    names = [c["Name"] for c in containers(podman)]
    if names:  # one call stops them all in parallel; compose down stops one by one
        podman.run("stop", "-t", "5", *names, check=False)
    podman.compose("down", "-v", "--remove-orphans", "-t", "5", check=False)
    for container in containers(podman):
        podman.run("rm", "-f", "-v", container["Name"], check=False)
    label = f"label=io.podman.compose.project={podman.project}"
    for volume in podman.run("volume", "ls", "-q", "--filter", label).stdout.split():
        podman.run("volume", "rm", "-f", volume, check=False)
    for network in podman.run("network", "ls", "-q", "--filter", label).stdout.split():
        podman.run("network", "rm", "-f", network, check=False)


def leftovers(podman: Podman) -> dict[str, list[str]]:
    """What `down` should have removed: containers, volumes, networks of the project."""
    label = f"label=io.podman.compose.project={podman.project}"
    return {
        "containers": podman.run("ps", "-a", "-q", "--filter", label).stdout.split(),
        "volumes": podman.run("volume", "ls", "-q", "--filter", label).stdout.split(),
        "networks": podman.run("network", "ls", "-q", "--filter", label).stdout.split(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: build | up | check | down | leftovers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["build", "up", "check", "down", "leftovers"])
    parser.add_argument(
        "--project", default=os.environ.get("SAFECITY_PODMAN_PROJECT", DEFAULT_PROJECT)
    )
    parser.add_argument(
        "--state", type=Path, default=Path(os.environ.get("SAFECITY_PODMAN_DIR", DEFAULT_STATE))
    )
    parser.add_argument("--scale", action="append", default=[], metavar="SERVICE=N")
    parser.add_argument("--profile", action="append", default=[])
    parser.add_argument(
        "--health-timeout",
        type=float,
        default=120.0,
        help="least seconds a service may take to become healthy",
    )
    args = parser.parse_args(argv)
    podman = Podman(args.state, args.project, {})
    try:
        if args.command == "build":
            build_images(podman, resolved_config(podman))
        elif args.command == "up":
            up(podman, args.scale, args.profile, args.health_timeout)
        elif args.command == "check":
            print(json.dumps(check(podman), indent=2))
        elif args.command == "down":
            down(podman)
        else:
            print(json.dumps(leftovers(podman), indent=2))
    except StackError as exc:
        print(f"podman-stack: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
