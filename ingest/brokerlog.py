"""The broker's log as security events: follow Mosquitto's log file, parse what matters.

What Mosquitto 2.0.11 writes with the platform config (`log_type error|warning|notice|
information`, `log_timestamp_format %Y-%m-%dT%H:%M:%S`), verified against the real
broker (tests/ingest/test_security_events.py):

- anonymous CONNECT, wrong password, unknown user (MQTT 5 and 3.1.1 alike):
  `2026-01-15T06:00:00: Client <unknown> disconnected, not authorised.` The client id
  is not known yet at that point, so the broker logs `<unknown>`; the preceding
  `New connection from <ip>:<port> on port <p>.` cannot be paired with it reliably.
- a client id or username with `+`/`#`: `ACL denying access to client with dangerous
  client id "<id>"` (or `username "<name>"`).
- a device's reach for another device's commands or results (a subscribe, a command, a
  forged result), refused by safecity's broker guard plugin (broker/guard.py):
  `safecity-guard: denied subscribe by client '<id>' user '<username>' on '<topic>'`
  (or `denied publish`).
- any other PUBLISH the ACL refuses (a device spoofing another's telemetry topic): nothing
  at these levels; only `log_type debug` adds `Denied PUBLISH from <id> (d0, q1, r0, m1,
  '<topic>', ...` (parsed when present, but debug logs every packet: not enabled by the
  platform). Other refused SUBSCRIBEs are never logged.

Older or differently built brokers say `... failed authentication` or
`Connection Refused: not authorised`; those are recognised too. Timestamps: the
`%Y-%m-%dT%H:%M:%S` format (the broker's local time, which must be the ingest's) or the
default epoch seconds; a line without one gets the wall clock.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

log = logging.getLogger("safecity.ingest.brokerlog")

_TS_ISO = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}): ")
_TS_EPOCH = re.compile(r"^(\d{9,11}): ")
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("auth_failure", re.compile(r"^Client (?P<id>.*) disconnected, not authori[sz]ed\.?$")),
    ("auth_failure", re.compile(r"^Client (?P<id>.*?),? failed authentication")),
    ("auth_failure", re.compile(r"^Connection (?:error|Refused)\b.*not authori[sz]ed")),
    (
        "dangerous_identity",
        re.compile(
            r'^ACL denying access to client with dangerous (?:client id|username) "(?P<id>.*)"'
        ),
    ),
    ("acl_denied", re.compile(r"^Denied PUBLISH from (?P<id>\S+) \(.*?'(?P<topic>[^']*)'")),
    (
        "acl_denied",
        re.compile(
            r"^safecity-guard: denied (?P<access>subscribe|publish) by client '(?P<id>[^']*)' "
            r"user '[^']*' on '(?P<topic>[^']*)'$"
        ),
    ),
)
MAX_LINE = 4096
"""Longer lines are cut (a client id can be 64 KiB); the parts that matter come first."""


@dataclass(frozen=True, slots=True)
class BrokerLogEvent:
    """One security-relevant broker log line."""

    type: str
    time_s: int | None
    client_id: str
    message: str
    topic: str | None = None
    access: str | None = None


def parse_line(line: str) -> BrokerLogEvent | None:
    """The security event of one log line, or None for every other line."""
    line = line.rstrip("\r\n")[:MAX_LINE]
    time_s: int | None = None
    message = line
    if match := _TS_ISO.match(line):
        try:
            # Naive: the broker's local time, read as this process's local time.
            time_s = int(datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S").timestamp())
        except ValueError:
            time_s = None
        message = line[match.end() :]
    elif match := _TS_EPOCH.match(line):
        time_s = int(match.group(1))
        message = line[match.end() :]
    for type_, pattern in _PATTERNS:
        found = pattern.match(message)
        if found is None:
            continue
        groups = found.groupdict()
        client_id = groups.get("id") or "<unknown>"
        return BrokerLogEvent(
            type_, time_s, client_id, message, groups.get("topic"), groups.get("access")
        )
    return None


class LogFollower:
    """`tail -F` of one file: starts at its end, follows appends, truncation and rotation.

    `read()` is blocking (call it from a worker thread) and returns the complete new
    lines; a partial last line waits for its newline.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._inode: int | None = None
        self._position = 0
        self._partial = b""
        self._started = False

    def read(self) -> list[str]:
        """The complete lines appended since the previous call."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._inode = None
            self._started = True  # a file that appears later is read from its start
            return []
        if not self._started:
            # Tail from the end: the history before this worker started is not replayed.
            self._inode, self._position, self._started = st.st_ino, st.st_size, True
            return []
        if st.st_ino != self._inode:
            # Rotated (or created after we started): read the new file from its start.
            self._inode, self._position, self._partial = st.st_ino, 0, b""
        elif st.st_size < self._position:
            # Truncated in place.
            self._position, self._partial = 0, b""
        if st.st_size == self._position:
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self._position)
            data = fh.read(st.st_size - self._position)
        self._position += len(data)
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        if len(self._partial) > MAX_LINE * 4:
            self._partial = self._partial[: MAX_LINE * 4]
        return [raw.decode("utf-8", "replace") for raw in complete]


class EventClock:
    """Deterministic millisecond timestamps for broker events: the log line's second plus
    the event's index within that second. Two workers following the same log write the
    same points (they overwrite each other instead of doubling).

    A second has 1,000 milliseconds: from its 1,000th event on, the events share the last
    one, and `stamp_count` says how many of them that slot holds so far. The slot's point
    is rewritten with the growing count, so the stored counts add up to every event.
    """

    SLOTS = 1000

    def __init__(self) -> None:
        self._second: int | None = None
        self._index = 0

    def stamp_count(self, time_s: int | None) -> tuple[int, int]:
        """(point time in ms, events in that slot so far) of the next event of `time_s`."""
        second = time_s if time_s is not None else int(time.time())
        if second == self._second:
            self._index += 1
        else:
            self._second, self._index = second, 0
        last = self.SLOTS - 1
        if self._index < last:
            return second * 1000 + self._index, 1
        return second * 1000 + last, self._index - last + 1

    def stamp(self, time_s: int | None) -> int:
        """The point time (ms) of the next event logged in second `time_s`."""
        return self.stamp_count(time_s)[0]
