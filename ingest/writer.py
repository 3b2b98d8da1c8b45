"""Writer stage: line-protocol batches to InfluxDB with the status-code policy below.

204 -> durable; 400/413 -> split until the refused lines are isolated (a `partial
write` stored the valid points already, and rewriting them is idempotent); 429, 5xx,
timeouts, refused connections -> retry with full-jitter backoff (honouring
Retry-After). A caller that can make a batch durable otherwise (the spool) passes
`give_up_after`: past it, a retryable failure raises `WriteDeferredError` instead of
retrying on. Auth failures (401/403/404) are never deferred: spooling would only hide
an operator error, so the caller stops acking (back-pressure) and says so.

Each city's data lives in its own database: in a deployment of several cities a batch
is split first by each line's `city` tag (every point carries one), and a line of a city
the deployment does not serve is refused, never written elsewhere. The batch counts as
written only when every city's share is.

One `/write` has one retention policy, so a batch is split by each line's measurement
family (`safecity.schema.retention_policy_of`): telemetry into the default policy,
`events` into `events`, `security_events` into `security`. Recognising a line costs one
C-level `startswith` against the few non-default measurement names.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Collection

from ingest import metrics
from safecity.errors import (
    StorageAuthError,
    StorageUnavailableError,
    WriteDeferredError,
    WriteRejectedError,
)
from safecity.influx import InfluxClient
from safecity.retry import Backoff, Sleep
from safecity.schema import EVENTS, RETENTION_FAMILIES, retention_policy_of

__all__ = ["Backoff", "InfluxWriter", "WriteDeferredError", "split_by_policy"]

log = logging.getLogger("safecity.ingest.writer")

# Line prefixes of every measurement kept outside the default policy ("name," or "name ").
_OWN_POLICY_PREFIXES = tuple(
    f"{m}{sep}"
    for f in RETENTION_FAMILIES
    if f.policy is not None
    for m in f.measurements
    for sep in (",", " ")
)


def measurement_of(line: str) -> str:
    """The measurement of a line (its text up to the first comma or space)."""
    cut = [i for i in (line.find(","), line.find(" ")) if i >= 0]
    return line[: min(cut)] if cut else line


_CITY_TAG = ",city="


def city_of(line: str) -> str | None:
    """The `city` tag of a line, or None. In line protocol an `=` inside a tag value is
    escaped, so the first unescaped `,city=` is the tag itself."""
    start = line.find(_CITY_TAG)
    if start < 0:
        return None
    start += len(_CITY_TAG)
    ends = [i for i in (line.find(",", start), line.find(" ", start)) if i >= 0]
    return line[start : min(ends)] if ends else None


_EVENTS_POLICY = retention_policy_of(EVENTS)
_MS_DIGITS = 16
"""A timestamp of at most this many digits is in ms (until the year 2286); ns have 19."""


def _precision(rp: str | None) -> str:
    """Events are written at ns (their sub-ms offset from seq), everything else at ms."""
    return "ns" if rp == _EVENTS_POLICY else "ms"


def _in_ns(line: str) -> str:
    """An events line with its timestamp in ns (a line spooled or dead-lettered before
    events carried their offset has it in ms)."""
    stamp = line.rsplit(" ", 1)[-1]
    return line + "000000" if len(stamp) <= _MS_DIGITS else line


def split_by_policy(lines: list[str]) -> list[tuple[str | None, list[int] | None]]:
    """(retention policy, indices of its lines) groups; indices None = all of `lines`.

    The common case, a batch of telemetry only, is one group without an index list.
    """
    special = [i for i, line in enumerate(lines) if line.startswith(_OWN_POLICY_PREFIXES)]
    if not special:
        return [(None, None)]
    groups: dict[str | None, list[int]] = {}
    marked = set(special)
    default = [i for i in range(len(lines)) if i not in marked]
    if default:
        groups[None] = default
    for i in special:
        groups.setdefault(retention_policy_of(measurement_of(lines[i])), []).append(i)
    return list(groups.items())


class InfluxWriter:
    """Writes batches of lines; returns the lines InfluxDB refused for their content."""

    def __init__(
        self,
        client: InfluxClient,
        backoff: Backoff | None = None,
        *,
        cities: Collection[str] = (),
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        # `cities`: the deployment's cities; each line goes to its city's database. One
        # city whose database is the client's own needs no routing (the usual deployment).
        ids = tuple(cities)
        self._routes: dict[str, InfluxClient] | None = None
        if len(ids) > 1 or (ids and client.for_city(ids[0], ids) is not client):
            self._routes = {c: client.for_city(c, ids) for c in ids}
        self._backoff = backoff or Backoff()
        self._rng = random.Random()
        # Injectable so a test can run thousands of retries without real sleeping.
        self._sleep = sleep
        self._clock = clock
        self.healthy = True
        self.auth_failing = False
        self.write_errors = 0
        """Failed write attempts so far (the `ingest_stats` counter)."""
        self.on_written: Callable[[list[str]], None] | None = None
        """Called with the lines of each write once InfluxDB holds them (refused ones left
        out): the worker announces them (`ingest.announce`)."""

    async def write(
        self, lines: list[str], give_up_after: float | None = None
    ) -> list[tuple[int, str]]:
        """Make `lines` durable; return (index, InfluxDB's message) for each refused line.

        With `give_up_after` (seconds), raise WriteDeferredError once InfluxDB has been
        unavailable for that long; without it, retry until it succeeds. Each retention
        policy's lines go in their own request(s); a deferral after some were written is
        harmless (rewriting a point is idempotent).
        """
        refused: list[tuple[int, str]] = []
        deadline = None if give_up_after is None else self._clock() + give_up_after
        if not lines:
            return refused
        if self._routes is None:
            await self._write_policies(None, lines, refused, deadline)
        else:
            for client, indices in self._split_by_city(lines, refused):
                group = [lines[i] for i in indices]
                own: list[tuple[int, str]] = []
                await self._write_policies(client, group, own, deadline)
                refused.extend((indices[i], message) for i, message in own)
            refused.sort()
        if self.on_written is not None:
            bad = {i for i, _ in refused}
            self.on_written([x for i, x in enumerate(lines) if i not in bad] if bad else lines)
        return refused

    def _split_by_city(
        self, lines: list[str], refused: list[tuple[int, str]]
    ) -> list[tuple[InfluxClient, list[int]]]:
        """(the city's client, indices of its lines); a line of no served city is refused."""
        assert self._routes is not None
        groups: dict[str, list[int]] = {}
        for i, line in enumerate(lines):
            city = city_of(line)
            if city in self._routes:
                groups.setdefault(city, []).append(i)
            else:
                refused.append((i, f"city {city!r} is not served by this deployment"))
        return [(self._routes[city], indices) for city, indices in groups.items()]

    async def _write_policies(
        self,
        client: InfluxClient | None,
        lines: list[str],
        refused: list[tuple[int, str]],
        deadline: float | None,
    ) -> None:
        """Write one database's lines (None: the writer's own client, as it is at each
        attempt), a request per retention policy; sorts `refused`."""
        for rp, indices in split_by_policy(lines):
            if indices is None:
                await self._write_range(client, lines, 0, len(lines), refused, deadline, rp)
                continue
            group = [lines[i] for i in indices]
            if rp == _EVENTS_POLICY:
                group = [_in_ns(line) for line in group]
            own: list[tuple[int, str]] = []
            await self._write_range(client, group, 0, len(group), own, deadline, rp)
            refused.extend((indices[i], message) for i, message in own)
        refused.sort()

    async def _write_range(
        self,
        client: InfluxClient | None,
        lines: list[str],
        lo: int,
        hi: int,
        refused: list[tuple[int, str]],
        deadline: float | None,
        rp: str | None,
    ) -> None:
        body = ("\n".join(lines[lo:hi]) + "\n").encode()
        try:
            await self._write_with_retry(client, body, deadline, rp, _precision(rp))
        except WriteRejectedError as exc:
            metrics.WRITE_ERRORS.labels(error=f"http_{exc.status}").inc()
            self.write_errors += 1
            if hi - lo == 1:
                refused.append((lo, exc.message))
                return
            mid = (lo + hi) // 2
            await self._write_range(client, lines, lo, mid, refused, deadline, rp)
            await self._write_range(client, lines, mid, hi, refused, deadline, rp)

    async def _write_with_retry(
        self,
        client: InfluxClient | None,
        body: bytes,
        deadline: float | None,
        rp: str | None,
        precision: str = "ms",
    ) -> None:
        attempt = 0
        while True:
            started = self._clock()
            target = client or self._client
            try:
                if deadline is None:
                    await target.write(body, precision=precision, rp=rp)
                else:
                    # A hung InfluxDB (SIGSTOP, overload) must not hold the batch past
                    # the deadline; an abandoned request that lands later is harmless.
                    budget = max(0.05, deadline - started)
                    try:
                        await asyncio.wait_for(
                            target.write(body, precision=precision, rp=rp), budget
                        )
                    except TimeoutError as exc:
                        raise StorageUnavailableError(
                            f"InfluxDB write took longer than {budget:.2f}s"
                        ) from exc
            except StorageUnavailableError as exc:
                delay = self._backoff.delay(attempt, self._rng, exc.retry_after)
                self._unhealthy("unavailable", exc, attempt, delay)
                if deadline is not None and self._clock() + delay >= deadline:
                    raise WriteDeferredError(str(exc)) from exc
            except StorageAuthError as exc:
                delay = self._backoff.delay(attempt, self._rng)
                self.auth_failing = True
                self._unhealthy("auth", exc, attempt, delay)
            else:
                metrics.WRITE_SECONDS.observe(max(0.0, self._clock() - started))
                if not self.healthy:
                    log.info("influxdb writes recovered", extra={"attempts": attempt + 1})
                self.healthy = True
                self.auth_failing = False
                return
            metrics.WRITE_RETRIES.inc()
            await self._sleep(delay)
            attempt += 1

    def _unhealthy(self, error: str, exc: Exception, attempt: int, delay: float) -> None:
        metrics.WRITE_ERRORS.labels(error=error).inc()
        self.write_errors += 1
        self.healthy = False
        level = logging.ERROR if error == "auth" else logging.WARNING
        if attempt == 0 or attempt % 10 == 0:
            log.log(
                level,
                "influxdb write failed, retrying",
                extra={"error": str(exc), "attempt": attempt + 1, "retry_in_s": round(delay, 3)},
            )
