"""The local images the podman compose run needs, built once and reused by content hash.

One Debian bookworm root filesystem, made by mmdebstrap from the host's Debian mirror
with every package the stand-ins need (one dpkg run instead of an apt run per image),
the host's local CA certificates trusted; the stand-ins for the Docker Hub images
(deploy/local/images/*.Containerfile) are thin layers on it; the project's Dockerfile
is built on the Python stand-in, its pip install fed from a wheelhouse the host's pip
builds from the hashed lock requirements.lock (honouring the host's pip configuration
and its cache). Every image is tagged by a hash of its inputs: when that tag exists,
nothing is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
COMPOSE_FILES = (ROOT / "docker-compose.yml", HERE / "compose.podman.yml")
# The image's dependencies, pinned with hashes (the Dockerfile installs from it).
LOCK = ROOT / "requirements.lock"
DEFAULT_STATE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "safecity-podman"
SUITE = "bookworm"
# The Python of SUITE: a host wheelhouse is used only when the host's Python matches.
SUITE_PYTHON = (3, 11)
BASE_IMAGE = f"localhost/safecity-local/debian:{SUITE}"
PYTHON_IMAGE = f"localhost/safecity-local/python:3.11-{SUITE}"
MOSQUITTO_IMAGE = f"localhost/safecity-local/mosquitto:{SUITE}"
# Stand-in image -> (its Containerfile under deploy/local/images, its Debian packages).
STANDINS = {
    PYTHON_IMAGE: ("python.Containerfile", ("python3", "python3-venv", "python-is-python3")),
    # The compiler and headers: the Dockerfile's broker stage builds the guard plugin on it.
    MOSQUITTO_IMAGE: (
        "mosquitto.Containerfile",
        (
            "mosquitto",
            "mosquitto-clients",
            "gcc",
            "libc6-dev",
            "make",
            "mosquitto-dev",
            "libmosquitto-dev",
        ),
    ),
    f"localhost/safecity-local/influxdb:{SUITE}": ("influxdb.Containerfile", ("influxdb", "curl")),
}
# What every image needs: the CA bundle, and useradd/groupadd (the Dockerfile's runtime).
BASE_PACKAGES = ("ca-certificates", "passwd")
MMDEBSTRAP_OPTIONS = (
    "--variant=minbase",
    "--dpkgopt=force-unsafe-io",
    '--aptopt=Acquire::Languages "none"',
    # Documentation is never read in these containers; skipping it saves unpacking.
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
)
PIP_SETTINGS = ("index-url", "extra-index-url", "trusted-host")
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
WHEELS_MOUNT = "/var/cache/safecity-wheels"
PROGRESS_EVERY = 15.0


class PodmanStackError(RuntimeError):
    """The stack could not be built, started or checked; the message names the service."""


# --- progress and timings -----------------------------------------------------------

START = time.monotonic()
TIMINGS: dict[str, float] = {}
# CPU seconds of the step's finished child processes: comparable across machine loads
# (what runs inside a started container is not a child and is not counted).
CPU: dict[str, float] = {}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def log(message: str) -> None:
    """Progress on stderr with the seconds since start (stdout carries JSON answers)."""
    print(
        f"podman-stack: [{time.monotonic() - START:6.1f}s] {message}", file=sys.stderr, flush=True
    )


@contextmanager
def step(name: str) -> Iterator[None]:
    """Time a step into TIMINGS, saying every PROGRESS_EVERY seconds that it still runs."""
    began = time.monotonic()
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(PROGRESS_EVERY):
            log(f"{name}: still running ({time.monotonic() - began:.0f}s)")

    cpu = _children_cpu()
    log(f"{name} ...")
    ticker = threading.Thread(target=heartbeat, daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        TIMINGS[name] = round(TIMINGS.get(name, 0.0) + time.monotonic() - began, 1)
        CPU[name] = round(CPU.get(name, 0.0) + _children_cpu() - cpu, 1)
        log(f"{name}: {time.monotonic() - began:.1f}s (cpu {_children_cpu() - cpu:.1f}s)")


def report_timings(extra: dict[str, Any] | None = None) -> None:
    """One machine-readable line with every step's seconds and the load average."""
    load = os.getloadavg()
    payload = {"steps": TIMINGS, "cpu": CPU, "load": [round(x, 2) for x in load], **(extra or {})}
    print(f"podman-stack: timings {json.dumps(payload)}", file=sys.stderr, flush=True)


# --- podman with private state ------------------------------------------------------


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
        flags = [a for f in COMPOSE_FILES for a in ("-f", str(f))]
        cmd = [binary, "--in-pod", "false", "-p", self.project, *flags, *args]
        return self._run(cmd, check=check, timeout=timeout)

    def _run(self, cmd: list[str], check: bool, timeout: float) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise PodmanStackError(f"{' '.join(cmd[:4])} ... failed:\n{result.stderr[-3000:]}")
        return result

    def images(self, short_names: bool = True) -> dict[str, str]:
        """Every tagged image in the private storage: name -> image id."""
        listing = self.run("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}").stdout
        found = dict(line.split() for line in listing.splitlines() if "<none>" not in line)
        # A short name (`safecity:local`) is stored as localhost/safecity:local.
        short = {n.removeprefix("localhost/"): i for n, i in found.items()}
        return {**short, **found} if short_names else found


# --- inputs and their hashes --------------------------------------------------------


def digest(*parts: str | bytes | Path) -> str:
    """A short hash of PARTS; a Path counts by its name and content (directories walked)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            files = sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]
            for file in files:
                if "__pycache__" in file.parts or file.suffix == ".pyc":
                    continue
                h.update(
                    str(file.relative_to(ROOT) if file.is_relative_to(ROOT) else file).encode()
                )
                h.update(file.read_bytes())
        else:
            h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def hashed(image: str, inputs: str) -> str:
    """IMAGE's tag for one set of inputs: `repo:tag-<hash>`."""
    return f"{image}-{inputs}"


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


def host_cas() -> list[Path]:
    """The host's local CA certificates, which the images trust too."""
    return sorted(HOST_CA_DIR.rglob("*.crt")) if HOST_CA_DIR.is_dir() else []


def copied_sources(dockerfile: Path, context: Path) -> list[Path]:
    """What the Dockerfile's COPY lines take from the context (over-inclusive is safe)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    sources: list[Path] = [dockerfile, context / ".dockerignore"]
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].upper() not in ("COPY", "ADD"):
            continue
        if any(w.startswith("--from") for w in words):
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        if args and args[0].startswith("["):
            args = json.loads(" ".join(args))
        sources += [context / src for src in args[:-1] if (context / src).exists()]
    return sources


# --- building -----------------------------------------------------------------------


def run_logged(cmd: list[str], env: dict[str, str], what: str, timeout: float = 1500) -> None:
    """Run CMD, raising a PodmanStackError naming WHAT (with the tail of its output) on failure."""
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise PodmanStackError(f"{what} failed:\n{(result.stdout + result.stderr)[-3000:]}")


def base_packages() -> list[str]:
    """Every Debian package of every stand-in, for the one root filesystem."""
    return sorted({*BASE_PACKAGES, *(p for _, pkgs in STANDINS.values() for p in pkgs)})


def build_base(podman: Podman, images: dict[str, str], done: dict[str, str]) -> str:
    """The shared root filesystem (mmdebstrap); returns its hash tag, made if missing."""
    sources = debian_sources()
    cas = host_cas()
    tag = hashed(
        BASE_IMAGE,
        digest(SUITE, *base_packages(), *MMDEBSTRAP_OPTIONS, *([sources] if sources else []), *cas),
    )
    done[tag] = "reused" if tag in images else "built"
    if tag in images:
        if images.get(BASE_IMAGE) != images[tag]:
            podman.run("tag", tag, BASE_IMAGE)
        return tag
    if not shutil.which("mmdebstrap"):
        raise PodmanStackError("mmdebstrap missing: `scripts/setup.sh --test` installs it")
    with step("base: mmdebstrap"), tempfile.TemporaryDirectory(dir=podman.state) as tmp:
        tar = Path(tmp) / "base.tar"
        cmd = ["mmdebstrap", "--quiet", *MMDEBSTRAP_OPTIONS]
        cmd.append("--include=" + ",".join(base_packages()))
        if cas:
            cmd += [
                f"--customize-hook=sync-in {HOST_CA_DIR} {HOST_CA_DIR}",
                '--customize-hook=chroot "$1" update-ca-certificates',
            ]
        cmd += [SUITE, str(tar)]
        if sources:
            cmd.append(str(sources))
        run_logged(cmd, dict(os.environ), "mmdebstrap")
        podman.run("import", "--change", 'CMD ["bash"]', str(tar), tag)
    podman.run("tag", tag, BASE_IMAGE)
    return tag


def build_standins(podman: Podman, images: dict[str, str], base: str, done: dict[str, str]) -> None:
    """The Docker Hub stand-ins, thin layers on the base, built in parallel when needed."""
    wanted: dict[str, tuple[str, str]] = {}
    for image, (containerfile, _) in STANDINS.items():
        tag = hashed(image, digest(base, containerfile, HERE / "images"))
        done[tag] = "reused" if tag in images else "built"
        if tag not in images:
            wanted[image] = (containerfile, tag)
        elif images.get(image) != images[tag]:
            podman.run("tag", tag, image)
    if not wanted:
        return
    with step("stand-ins: build"):
        procs = {
            image: subprocess.Popen(
                [
                    "podman",
                    "build",
                    "-q",
                    "--build-arg",
                    f"BASE={base}",
                    *("-f", str(HERE / "images" / containerfile), "-t", image, "-t", tag),
                    str(HERE / "images"),
                ],
                cwd=ROOT,
                env=podman.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for image, (containerfile, tag) in wanted.items()
        }
        for image, proc in procs.items():
            _, err = proc.communicate(timeout=900)
            if proc.returncode != 0:
                raise PodmanStackError(f"building {image} failed:\n{err[-3000:]}")


def wheelhouse(podman: Podman) -> Path | None:
    """Wheels for the Dockerfile's pip installs, made by the host's pip (its configuration,
    cache and CA settings) from the hashed lock; None when the host's Python is not the
    image's."""
    if sys.version_info[:2] != SUITE_PYTHON:
        log(f"host Python {sys.version_info[:2]} is not the image's: pip uses the index")
        return None
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    build_requires = project["build-system"]["requires"]
    target = (
        podman.state / "wheels" / digest(LOCK, *build_requires, sys.platform, os.uname().machine)
    )
    if (target / ".complete").exists():
        return target
    with step("wheelhouse: host pip"):
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(target)]
        # The locked wheels as published (their hashes are checked again in the image),
        # and the build backend of the project's own wheel.
        run_logged(
            [*pip_wheel, "--require-hashes", "-r", str(LOCK)],
            dict(os.environ),
            "pip wheel (the lock)",
        )
        run_logged([*pip_wheel, *build_requires], dict(os.environ), "pip wheel (the build backend)")
        (target / ".complete").write_text(LOCK.read_text())
    for older in target.parent.iterdir():  # wheelhouses of earlier locks
        if older != target:
            shutil.rmtree(older, ignore_errors=True)
    return target


def build_project(
    podman: Podman,
    config: dict[str, Any],
    images: dict[str, str],
    done: dict[str, str],
    wheels: Path | None,
) -> None:
    """The project's Dockerfile image(s), on the Python stand-in; skipped when unchanged."""
    seen: set[str] = set()
    for name, service in sorted(config["services"].items()):
        build = service.get("build")
        if not build or service["image"] in seen:
            continue
        seen.add(service["image"])
        context = Path(build["context"] if isinstance(build, dict) else build)
        dockerfile = context / (
            build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
        )
        args = {"PYTHON_IMAGE": PYTHON_IMAGE, "MOSQUITTO_IMAGE": MOSQUITTO_IMAGE}
        args |= host_pip_settings()
        if wheels:
            args |= {"PIP_FIND_LINKS": WHEELS_MOUNT, "PIP_NO_INDEX": "1"}
        inputs = [images.get(PYTHON_IMAGE, ""), json.dumps(args, sort_keys=True)]
        tag = hashed(service["image"], digest(*inputs, *copied_sources(dockerfile, context)))
        done[tag] = "reused" if tag in images else "built"
        if tag in images:
            if images.get(service["image"]) != images[tag]:
                podman.run("tag", tag, service["image"])
            continue
        cmd = ["build", "-q", "--layers", "-t", service["image"], "-t", tag]
        cmd += ["-f", str(dockerfile)]
        if isinstance(build, dict) and build.get("target"):
            cmd += ["--target", build["target"]]
        if wheels:
            cmd += ["--volume", f"{wheels}:{WHEELS_MOUNT}:ro"]
        for key, value in args.items():
            cmd += ["--build-arg", f"{key}={value}"]
        with step(f"{service['image']}: build ({name})"):
            podman.run(*cmd, str(context), timeout=1500)


HASH_TAG = re.compile(r"-[0-9a-f]{16}$")


def prune(podman: Podman, current: Iterable[str]) -> None:
    """Drop this driver's superseded hash tags, and the layers only they held."""
    keep = {image.removeprefix("localhost/") for image in current}
    repos = {image.rsplit(":", 1)[0] for image in keep}
    stale = [
        image
        for image in podman.images(short_names=False)
        if HASH_TAG.search(image)
        and image.removeprefix("localhost/").rsplit(":", 1)[0] in repos
        and image.removeprefix("localhost/") not in keep
    ]
    if stale:
        podman.run("rmi", *stale, check=False)
    podman.run("image", "prune", "-f", check=False)


def build_images(podman: Podman, config: dict[str, Any]) -> dict[str, str]:
    """Every image the stack needs; returns each hash tag as "built" or "reused"."""
    done: dict[str, str] = {}
    images = podman.images()
    # The host's pip fetches the wheels while mmdebstrap runs (both partly network-bound).
    with ThreadPoolExecutor(1) as pool:
        wheels = pool.submit(wheelhouse, podman)
        base = build_base(podman, images, done)
        images = podman.images() if done[base] == "built" else images
        build_standins(podman, images, base, done)
        images = podman.images() if "built" in done.values() else images
        build_project(podman, config, images, done, wheels.result())
    if "built" in done.values():
        with step("prune superseded images"):
            prune(podman, done)
    for tag, how in done.items():
        log(f"{tag}: {how}")
    return done
