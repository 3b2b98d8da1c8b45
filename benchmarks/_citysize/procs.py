"""What the city-size benchmark reads off the running stack's processes (/proc only)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Direct children of `pid`."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def descendants(pid: int) -> list[int]:
    """Every process below `pid`."""
    found, frontier = [], [pid]
    while frontier:
        frontier = [c for p in frontier for c in children(p)]
        found.extend(frontier)
    return found


def cmdline(pid: int) -> str:
    """The process's command line, spaces between the arguments ("" once it is gone)."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (0 once it is gone)."""
    with contextlib.suppress(OSError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    return 0.0


def rss_mib(pid: int) -> float:
    """Resident memory now, MiB (0 once it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def sockets(pid: int) -> int:
    """Open sockets of a process (a broker's connections, plus its listeners)."""
    count = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    count += 1
    return count


def open_files(pid: int) -> int:
    """Open file descriptors of a process."""
    with contextlib.suppress(OSError):
        return len(os.listdir(f"/proc/{pid}/fd"))
    return 0


@dataclass
class StackPids:
    """The pids of one `safecity run`: broker, database, services, simulator shards."""

    mosquitto: int
    influxd: int
    services: dict[str, int]
    simulator: list[int]
    """The simulator's parent first, then its shard processes."""

    @classmethod
    def of(cls, launcher: int) -> StackPids:
        """Find them below the launcher's pid."""
        found: dict[str, int] = {}
        for pid in children(launcher):
            line = cmdline(pid)
            if "mosquitto" in line.split(" ")[0]:
                found["mosquitto"] = pid
            elif "influxd" in line.split(" ")[0]:
                found["influxd"] = pid
            elif " -m control " in f" {line} ":
                found[line.split(" -m control ", 1)[1].split(" ")[0]] = pid
        sim = found.pop("simulate")
        return cls(
            mosquitto=found.pop("mosquitto"),
            influxd=found.pop("influxd"),
            services=found,
            simulator=[sim, *descendants(sim)],
        )

    def simulators(self) -> list[int]:
        """The simulator's parent and the shard processes it has started by now."""
        return [self.simulator[0], *descendants(self.simulator[0])]

    def simulator_rss(self) -> float:
        """Resident memory of the simulator's processes, MiB (spawn's tracker included)."""
        return sum(rss_mib(p) for p in self.simulators())

    def simulator_files(self) -> int:
        """Open files of the busiest simulator process."""
        return max(open_files(p) for p in self.simulators())
