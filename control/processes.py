"""Child processes of the launcher: start, readiness, stop, kill, pause; free ports, binaries."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import logging
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx

from safecity.errors import StackError

log = logging.getLogger("control.processes")

LOOPBACK = "127.0.0.1"


# sbin directories are often missing from a non-root PATH, yet that is where Debian
# puts mosquitto.
_EXTRA_BIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")

_LOG_TAIL_LINES = 20
_POLL_INTERVAL = 0.05


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# The ports free_port has handed out in this process: a stack picks all of its ports
# before it starts anything, so a port still free (not yet bound) may not go out twice.
_HANDED_OUT: set[int] = set()
_HANDED_OUT_LOCK = threading.Lock()


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on `host` that was free a moment ago, below the ephemeral range,
    and not handed out before by this process.

    A port the kernel hands out for port 0 comes from the ephemeral range, where any
    outgoing connection may take it as its source port before the service binds it; a
    random port below that range is only ever taken by another service asking the same.
    """
    low = max(_ephemeral_low() - 12_000, 10_000)
    for _ in range(100):
        port = random.randrange(low, low + 12_000)
        with _HANDED_OUT_LOCK, socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if port in _HANDED_OUT:
                continue
            try:
                sock.bind((host, port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        fallback: int = sock.getsockname()[1]
        return fallback


@functools.cache
def _probe_tls() -> ssl.SSLContext:
    # httpx's default context, made once: each one loads the CA bundle (10-20 ms), and a
    # probe polled every 50 ms that made its own kept the launcher busy while it waited.
    return httpx.create_ssl_context()


def http_ok(url: str) -> Callable[[], bool]:
    """A readiness probe: True once GET url answers 200 (connection errors are "not yet")."""

    def probe() -> bool:
        try:
            return httpx.get(url, timeout=1.0, verify=_probe_tls()).status_code == 200
        except httpx.HTTPError:
            return False

    return probe


def ensure_port_free(host: str, port: int, service: str) -> None:
    """Raise StackError if something already listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like the servers themselves: a TIME_WAIT left by our own last run is no clash.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            # Checked up front because a readiness probe would happily talk to the
            # other server (e.g. a distro daemon on 1883/8086) and report success.
            raise StackError(
                f"cannot start {service}: {host}:{port} is already in use ({exc.strerror}); "
                "stop whatever listens there or choose another port"
            ) from exc


def find_binary(name: str, package: str, binary: str | os.PathLike[str] | None = None) -> str:
    """Resolve an executable (explicit path or name) or raise StackError naming its package."""
    wanted = os.fspath(binary) if binary is not None else name
    hint = f"install the Debian package '{package}' (apt-get install {package})"
    if os.sep in wanted:
        if os.path.isfile(wanted) and os.access(wanted, os.X_OK):
            return wanted
        raise StackError(f"{name} not found at {wanted}: {hint}")
    search_path = os.pathsep.join(
        [p for p in os.environ.get("PATH", os.defpath).split(os.pathsep) if p]
        + list(_EXTRA_BIN_DIRS)
    )
    found = shutil.which(wanted, path=search_path)
    if found is None:
        raise StackError(f"{wanted} not found on PATH: {hint}")
    return found


def tail_file(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as fh:
            # Logs of long runs can be large; the tail is all we need.
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


_live: weakref.WeakSet[ManagedProcess] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    # A launcher that dies on an unhandled exception must not leave daemons behind
    # holding ports and data dirs.
    for proc in list(_live):
        proc.stop(timeout=5)


def _term_with_parent() -> None:
    """In the forked child: ask the kernel for SIGTERM when the parent goes away."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: best effort, the atexit hook remains
        pass


_PR_SET_PDEATHSIG = 1


class ManagedProcess:
    """A child process in its own process group, logging to a file, stopped with TERM then KILL."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd if cwd is not None else log_path.parent
        self.env = env
        # Linux: the kernel TERMs the child if the launcher dies, even by SIGKILL, when no
        # atexit hook runs. Only for launchers that start children from their main thread
        # (the signal follows the thread that forked, not the process).
        self.die_with_parent = die_with_parent
        self._popen: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """Pid of the current child, or None if it was never started."""
        return self._popen.pid if self._popen is not None else None

    @property
    def alive(self) -> bool:
        """True while the child runs (also while it is paused)."""
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit status of the last child (negative: killed by that signal), None if running."""
        return self._popen.poll() if self._popen is not None else None

    def start(self) -> None:
        """Start the child; raise StackError if it is already running or cannot be executed."""
        with self._lock:
            if self.alive:
                raise StackError(f"{self.name} is already running (pid {self.pid})")
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._close_log()
            # Append, so a restart keeps the history of the previous run.
            self._log_file = self.log_path.open("ab")
            try:
                self._popen = subprocess.Popen(
                    self.argv,
                    cwd=self.cwd,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=self._log_file,
                    stderr=subprocess.STDOUT,
                    # Own session: terminal signals (Ctrl-C) go to the launcher only,
                    # which then stops the services in order.
                    start_new_session=True,
                    preexec_fn=_term_with_parent if self.die_with_parent else None,
                )
            except OSError as exc:
                self._close_log()
                raise StackError(f"cannot start {self.name} ({self.argv[0]}): {exc}") from exc
            _live.add(self)

    def wait_ready(self, probe: Callable[[], bool], timeout: float) -> float:
        """Poll `probe` until True; return seconds taken; StackError (log tail) if not."""
        if self._popen is None:
            raise StackError(f"{self.name} was not started")
        started = time.monotonic()
        deadline = started + timeout
        last_error = ""
        while True:
            if not self.alive:
                self.stop()  # releases the log file; the child is already gone
                raise StackError(
                    f"{self.name} exited during start-up with status {self.returncode}; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            try:
                if probe():
                    # The probe may have reached another process that holds the port;
                    # our child then dies on bind, so look once more.
                    if self.alive:
                        return time.monotonic() - started
                    continue
            except Exception as exc:  # the probe is foreign code; any failure means "not yet"
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                self.stop()
                detail = f"; last probe error: {last_error}" if last_error else ""
                raise StackError(
                    f"{self.name} not ready within {timeout:g}s{detail}; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(_POLL_INTERVAL)

    def send_signal(self, sig: signal.Signals) -> None:
        """Send `sig` to the child's process group (no-op if it is not running)."""
        if self._popen is None or self._popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._popen.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` s; idempotent; returns the exit status."""
        with self._lock:
            popen = self._popen
            if popen is None:
                return None
            if popen.poll() is None:
                started = time.monotonic()
                log.info("stopping %s (pid %d)", self.name, popen.pid)
                self.send_signal(signal.SIGTERM)
                # A paused (SIGSTOPped) child would only see the TERM once continued.
                self.send_signal(signal.SIGCONT)
                try:
                    popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.warning(
                        "%s (pid %d) ignored SIGTERM for %gs, killing it",
                        self.name,
                        popen.pid,
                        timeout,
                    )
                    self.send_signal(signal.SIGKILL)
                    popen.wait()
                log.info(
                    "%s stopped in %.2fs (status %s)",
                    self.name,
                    time.monotonic() - started,
                    popen.returncode,
                )
            self._close_log()
            _live.discard(self)
            return popen.returncode

    def kill(self) -> None:
        """SIGKILL the child and reap it (fault injection: a crash, no clean shutdown)."""
        with self._lock:
            popen = self._popen
            if popen is None or popen.poll() is not None:
                return
            log.info("killing %s (pid %d)", self.name, popen.pid)
            self.send_signal(signal.SIGKILL)
            popen.wait()
            self._close_log()
            _live.discard(self)

    def pause(self) -> None:
        """SIGSTOP the child: it keeps its sockets but answers nothing (a hung service)."""
        log.info("pausing %s (pid %s)", self.name, self.pid)
        self.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused child."""
        log.info("resuming %s (pid %s)", self.name, self.pid)
        self.send_signal(signal.SIGCONT)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last `lines` lines of the child's stdout/stderr log."""
        return tail_file(self.log_path, lines)

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


class LocalService:
    """What a locally launched server shares: its process, lifecycle and fault helpers."""

    name = "service"
    process: ManagedProcess

    @property
    def pid(self) -> int | None:
        """Pid of the server process, if started."""
        return self.process.pid

    @property
    def alive(self) -> bool:
        """True while the server process runs."""
        return self.process.alive

    def start(self) -> Self:
        """Start the server and wait until it answers."""
        raise NotImplementedError

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM, then SIGKILL after the timeout); idempotent."""
        self.process.stop(timeout)

    def restart(self, timeout: float = 10.0) -> None:
        """Graceful stop (if running), then start again on the same ports and data dir."""
        self.stop(timeout)
        self.start()

    def kill(self) -> None:
        """SIGKILL the server: a crash (Mosquitto loses what was not autosaved yet)."""
        self.process.kill()

    def pause(self) -> None:
        """SIGSTOP the server: connections hang instead of being refused."""
        self.process.pause()

    def resume(self) -> None:
        """SIGCONT a paused server."""
        self.process.resume()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
