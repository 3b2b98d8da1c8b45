"""Run docker-compose.yml for real under podman, without Docker Hub or a Docker engine.

    python deploy/local/podman_stack.py build            # local images (cached)
    python deploy/local/podman_stack.py up [--scale ingest=3]
    python deploy/local/podman_stack.py check            # every service healthy, 0 restarts
    python deploy/local/podman_stack.py down             # containers, volumes, network

Images: deploy/local/podman_build.py (one Debian root filesystem with every stand-in's
packages, thin stand-ins for the Docker Hub images, the project's Dockerfile; each
tagged by the hash of its inputs and rebuilt only when they change). The stack:
podman-compose with docker-compose.yml plus deploy/local/compose.podman.yml, each
service started as soon as its own `depends_on` conditions hold, because podman 4.3
neither resolves those conditions more than one level deep nor, without systemd, runs
health checks: this driver runs them itself (`podman healthcheck run`, polled every
fraction of a second) and waits for one-shot services to exit 0. Every step logs its
elapsed seconds on stderr and each command ends with a `timings` JSON line.

Podman's own state (storage, runtime files, containers.conf) lives under
$SAFECITY_PODMAN_DIR (default ~/.cache/safecity-podman), so nothing in /etc changes and
the base images stay cached between runs. Errors name the service at fault.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

# A sibling script, not a package: found through this directory, run or imported.
from podman_build import (
    BASE_IMAGE,
    DEFAULT_STATE,
    TIMINGS,
    Podman,
    PodmanStackError,
    build_images,
    log,
    report_timings,
    step,
)

__all__ = ["BASE_IMAGE", "DEFAULT_STATE", "TIMINGS", "Podman", "PodmanStackError"]
DEFAULT_PROJECT = "safecity"
COMPLETED = "service_completed_successfully"
HEALTHY = "service_healthy"
POLL = 0.3
# Health checks run at once: enough to overlap podman's own latency, few enough not to
# starve each other's probe of CPU on a small machine.
HEALTH_CONCURRENCY = 4


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


def dependencies(service: dict[str, Any]) -> dict[str, str]:
    """A service's `depends_on` as {service: condition} (the list form: started)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (rule or {}).get("condition", "service_started") for name, rule in deps.items()}


def dependency_levels(services: dict[str, Any]) -> list[list[str]]:
    """Services grouped so each group depends only on earlier groups."""
    deps = {name: set(dependencies(s)) & set(services) for name, s in services.items()}
    levels: list[list[str]] = []
    placed: set[str] = set()
    while len(placed) < len(deps):
        level = sorted(n for n, d in deps.items() if n not in placed and d <= placed)
        if not level:
            raise PodmanStackError(f"depends_on cycle among {sorted(set(deps) - placed)}")
        levels.append(level)
        placed.update(level)
    return levels


def is_one_shot(services: dict[str, Any], name: str) -> bool:
    """A service others wait on to complete (compose `service_completed_successfully`)."""
    return any(dependencies(s).get(name) == COMPLETED for s in services.values())


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


def healthy(podman: Podman, names: Iterable[str]) -> dict[str, bool]:
    """Each container's health check, run once, all at the same time."""
    names = list(names)
    if not names:
        return {}
    with ThreadPoolExecutor(min(len(names), HEALTH_CONCURRENCY)) as pool:
        runs = pool.map(lambda n: podman.run("healthcheck", "run", n, check=False), names)
        return {name: run.returncode == 0 for name, run in zip(names, runs, strict=True)}


class Waiter:
    """Polls one service until it is ready: one-shots exited 0, others healthy."""

    def __init__(self, podman: Podman, service: str, spec: dict[str, Any], one_shot: bool) -> None:
        self.podman, self.service, self.one_shot = podman, service, one_shot
        self.health = bool(spec.get("test")) and not spec.get("disable")
        self.pending = {c["Name"] for c in containers(podman, service)}
        if not self.pending:
            raise PodmanStackError(f"service {service}: no container was started")

    def ready(self) -> bool:
        """One poll; raises PodmanStackError naming the service when it can no longer succeed."""
        if not (self.one_shot or self.health):
            return True
        states = json.loads(self.podman.run("inspect", *sorted(self.pending)).stdout)
        for c in states:
            name, state = c["Name"], c["State"]
            if self.one_shot and not state["Running"] and state["Status"] == "exited":
                if state["ExitCode"] != 0:
                    raise PodmanStackError(
                        f"service {self.service}: {name} exited {state['ExitCode']} (must "
                        f"complete successfully):\n{logs_tail(self.podman, name)}"
                    )
                self.pending.discard(name)
            elif not self.one_shot and not state["Running"]:
                raise PodmanStackError(
                    f"service {self.service}: {name} is {state['Status']} (exit "
                    f"{state['ExitCode']}), not healthy:\n{logs_tail(self.podman, name)}"
                )
        if not self.one_shot:
            passed = healthy(self.podman, self.pending)
            self.pending -= {name for name, ok in passed.items() if ok}
        return not self.pending


def probe(podman: Podman, name: str, spec: dict[str, Any]) -> str:
    """The health check's own command run once in NAME: its exit code and output."""
    test = list(spec.get("test") or [])
    if not test or test[0] not in ("CMD", "CMD-SHELL"):
        return "no health check command"
    argv = test[1:] if test[0] == "CMD" else ["sh", "-c", " ".join(test[1:])]
    result = podman.run("exec", name, *argv, check=False)
    output = (result.stdout + result.stderr).strip()[-2000:]
    return f"its health check exits {result.returncode}: {output or '(no output)'}"


def not_in_time(
    podman: Podman, service: str, pending: list[str], spec: dict[str, Any]
) -> PodmanStackError:
    """The error for SERVICE not ready by its deadline: its health check's own answer (run
    once more by podman exec) and the first pending container's log."""
    first = pending[0]
    return PodmanStackError(
        f"service {service}: {', '.join(pending)} not ready in time; in {first} "
        f"{probe(podman, first, spec)}\n{logs_tail(podman, first)}"
    )


def budget(spec: dict[str, Any], floor: float) -> float:
    """Seconds compose would allow a health check before calling the service unhealthy."""
    allowed = seconds(spec.get("start_period"), 0)
    allowed += seconds(spec.get("interval"), 30) * int(spec.get("retries", 3))
    return max(allowed, floor)


def wait_healthy(podman: Podman, service: str, spec: dict[str, Any], floor: float) -> None:
    """Run SERVICE's health check until every container passes, as compose would."""
    deadline = time.monotonic() + budget(spec, floor)
    waiter = Waiter(podman, service, {"test": ["CMD", "true"], **spec}, one_shot=False)
    while not waiter.ready():
        if time.monotonic() > deadline:
            raise not_in_time(podman, service, sorted(waiter.pending), spec)
        time.sleep(POLL)


def missing_images(podman: Podman, services: dict[str, Any]) -> list[str]:
    """Services whose image is not in the private storage."""
    have = set(podman.images())
    missing = []
    for name, service in services.items():
        image = str(service.get("image", ""))
        if image not in have:
            missing.append(f"service {name}: image {image} missing; run `build` first")
    return missing


class _Startup:
    """The state of one `up`: what was asked for, what runs, what is ready."""

    def __init__(
        self, podman: Podman, services: dict[str, Any], scale: Sequence[str], floor: float
    ) -> None:
        self.podman, self.services, self.floor = podman, services, floor
        self.scale_args = [a for s in scale for a in ("--scale", s)]
        self.began = time.monotonic()
        self.started: set[str] = set()  # `up` asked for
        self.running: set[str] = set()  # `up` returned
        self.ready: set[str] = set()  # healthy, or completed
        self.waiters: dict[str, tuple[Waiter, float]] = {}
        self.starting: dict[Future[Any], list[str]] = {}

    def startable(self) -> list[str]:
        """Services not started yet whose own depends_on conditions hold."""
        return sorted(
            name
            for name, service in self.services.items()
            if name not in self.started
            and all(
                dep not in self.services
                or dep in (self.running if cond == "service_started" else self.ready)
                for dep, cond in dependencies(service).items()
            )
        )

    def start(self, starter: ThreadPoolExecutor, batch: list[str]) -> None:
        """Ask compose to start `batch` (in the background)."""
        log(f"starting {', '.join(batch)}")
        args = ["up", "-d", "--no-deps", "--no-build", *self.scale_args, *batch]
        self.starting[starter.submit(self.podman.compose, *args)] = batch
        self.started.update(batch)

    def collect_started(self) -> None:
        """Watch the services whose `up` returned, each with its own deadline."""
        for future in [f for f in self.starting if f.done()]:
            future.result()
            for name in self.starting.pop(future):
                self.running.add(name)
                spec = self.services[name].get("healthcheck") or {}
                one_shot = is_one_shot(self.services, name)
                deadline = time.monotonic() + (
                    max(self.floor, 300) if one_shot else budget(spec, self.floor)
                )
                self.waiters[name] = (Waiter(self.podman, name, spec, one_shot), deadline)

    def poll(self) -> None:
        """Poll every watched service at once; raise for one past its deadline."""
        with ThreadPoolExecutor(max(1, len(self.waiters))) as pool:
            polls = {name: pool.submit(w.ready) for name, (w, _) in self.waiters.items()}
        for name, poll in polls.items():
            waiter, deadline = self.waiters[name]
            if poll.result():
                self.ready.add(name)
                del self.waiters[name]
                TIMINGS[f"up: {name} ready at"] = round(time.monotonic() - self.began, 1)
                log(f"{name}: {'completed' if waiter.one_shot else 'ready'}")
            elif time.monotonic() > deadline:
                spec = self.services[name].get("healthcheck") or {}
                raise not_in_time(self.podman, name, sorted(waiter.pending), spec)


def up(podman: Podman, scale: Sequence[str], profiles: Sequence[str], floor: float) -> None:
    """Start each service once its own depends_on conditions hold, as compose does."""
    with step("up: compose config"):
        config = resolved_config(podman)
    services = active_services(config, profiles)
    dependency_levels(services)  # no cycle
    problems = missing_images(podman, services)
    if problems:
        raise PodmanStackError("\n".join(problems))
    startup = _Startup(podman, services, scale, floor)
    # One compose call at a time (concurrent ones race creating shared volumes); health
    # polls go on meanwhile, so a service starts the moment its own conditions hold.
    with ThreadPoolExecutor(1) as starter:
        while len(startup.ready) < len(services):
            batch = startup.startable()
            if batch:
                startup.start(starter, batch)
            startup.collect_started()
            startup.poll()
            if not batch and len(startup.ready) < len(services):
                time.sleep(POLL)
    TIMINGS["up: start to all ready"] = round(time.monotonic() - startup.began, 1)
    log("every service is up")


def check(podman: Podman) -> list[dict[str, Any]]:
    """Every long-running container healthy and never restarted; one-shots exited 0."""
    found = containers(podman)
    if not found:
        raise PodmanStackError(f"project {podman.project} has no containers")
    report, problems, to_check = [], [], []
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
            to_check.append(entry)
        else:
            entry["status"] = "running"
    passed = healthy(podman, [str(e["container"]) for e in to_check])
    for entry in to_check:
        name = str(entry["container"])
        # One failed probe is not "unhealthy" (compose needs several in a row); a probe
        # that lost the race for the CPU to its neighbours gets a second one, alone.
        if not passed[name] and not healthy(podman, [name])[name]:
            problems.append(
                f"service {entry['service']}: {name} is unhealthy:\n{logs_tail(podman, name, 10)}"
            )
    if problems:
        raise PodmanStackError("\n".join(problems))
    return report


def down(podman: Podman) -> None:
    """Remove the project's containers, volumes and network (compose `down -v`)."""
    names = [c["Name"] for c in containers(podman)]
    if names:  # one call stops them all in parallel; compose down stops one by one
        with step("down: stop"):
            podman.run("stop", "-t", "5", *names, check=False)
    with step("down: compose down -v"):
        podman.compose("down", "-v", "--remove-orphans", "-t", "5", check=False)
    left = leftovers(podman)
    for container in left["containers"]:
        podman.run("rm", "-f", "-v", container, check=False)
    for volume in left["volumes"]:
        podman.run("volume", "rm", "-f", volume, check=False)
    for network in left["networks"]:
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
    extra: dict[str, Any] = {"command": args.command}
    try:
        if args.command == "build":
            extra["images"] = build_images(podman, resolved_config(podman))
        elif args.command == "up":
            up(podman, args.scale, args.profile, args.health_timeout)
        elif args.command == "check":
            print(json.dumps(check(podman), indent=2))
        elif args.command == "down":
            down(podman)
        else:
            print(json.dumps(leftovers(podman), indent=2))
    except PodmanStackError as exc:
        print(f"podman-stack: error: {exc}", file=sys.stderr)
        return 1
    finally:
        report_timings(extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
