"""The ledger checker: what was sent (the ledger) against InfluxDB and the dead-letter store.

`safecity verify --ledger FILE [--deadletters DIR ...]` and the fault tests use it.
For every device in the ledger it reads the device's points of the ledger's time
range back from InfluxDB and reports:

- `lost`: acknowledged good messages (PUBACK < 0x80) not stored;
- `unexpected`: stored points the ledger has no good message for;
- `duplicated`: (device, seq) pairs stored more than once (under different times);
- `value_mismatch`: stored points whose seq or values differ from what was sent;
- dead letters by reason, bad messages missing from the store, and good messages
  that were dead-lettered.

The dead-letter store is read as JSON lines (`deadletters.jsonl` in each DIR); this
module imports no service package (layering rule).

In a deployment of several cities each entry is checked in the database of the city its
topic names (`InfluxSettings.database_for`); `city` narrows a check to one city's
entries and dead letters.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safecity import catalogue, ledger, schema, topics
from safecity.errors import SafecityError, VerifyError
from safecity.influx import InfluxClient

DEADLETTER_FILE = "deadletters.jsonl"


@dataclass
class Report:
    """Outcome of a check; `ok` when nothing was lost, duplicated, altered or unaccounted for."""

    sent: int = 0
    sent_by_city: dict[str, int] = field(default_factory=dict)
    acknowledged: int = 0
    refused_by_broker: int = 0
    good: int = 0
    bad: int = 0
    stored: int = 0
    lost: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    value_mismatch: list[str] = field(default_factory=list)
    deadletters_by_reason: dict[str, int] = field(default_factory=dict)
    bad_not_deadlettered: list[str] = field(default_factory=list)
    bad_wrong_reason: list[str] = field(default_factory=list)
    good_deadlettered: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every acknowledged message is accounted for exactly once."""
        return not (
            self.lost
            or self.unexpected
            or self.duplicated
            or self.value_mismatch
            or self.bad_not_deadlettered
        )

    def summary(self) -> dict[str, Any]:
        """Counts (and a few examples of each problem) as a JSON-able dict."""
        out: dict[str, Any] = {
            "sent": self.sent,
            "sent_by_city": dict(sorted(self.sent_by_city.items())),
            "acknowledged": self.acknowledged,
            "refused_by_broker": self.refused_by_broker,
            "good": self.good,
            "bad": self.bad,
            "stored": self.stored,
        }
        for name in (
            "lost",
            "unexpected",
            "duplicated",
            "value_mismatch",
            "bad_not_deadlettered",
            "bad_wrong_reason",
            "good_deadlettered",
        ):
            items: list[str] = getattr(self, name)
            out[name] = len(items)
            if items:
                out[f"{name}_examples"] = items[:5]
        out["deadletters_by_reason"] = dict(sorted(self.deadletters_by_reason.items()))
        return out

    def render(self) -> str:
        """Human-readable lines, one per figure."""
        lines = []
        for key, value in self.summary().items():
            if key == "deadletters_by_reason":
                reasons = ", ".join(f"{k}={v}" for k, v in value.items()) or "none"
                lines.append(f"{'dead letters':22} {reasons}")
            elif key == "sent_by_city":
                lines.append(f"{'cities':22} {', '.join(f'{k}={v}' for k, v in value.items())}")
            else:
                lines.append(f"{key:22} {value}")
        lines.append("verdict                OK" if self.ok else "verdict                FAIL")
        return "\n".join(lines)


def read_deadletters(directories: Iterable[Path]) -> list[dict[str, Any]]:
    """All dead-letter records of the given store directories (torn lines skipped)."""
    out: list[dict[str, Any]] = []
    for directory in directories:
        path = directory / DEADLETTER_FILE if directory.is_dir() else directory
        if not path.exists():
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise VerifyError(f"cannot read dead-letter store {path}: {exc}") from exc
        for line in data.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                out.append(record)
    return out


def topic_city(topic: str) -> str:
    """The city a device topic names (its third level), or ''."""
    parts = topic.split("/", 3)
    return parts[2] if len(parts) > 2 else ""


def ledger_cities(entries: Iterable[ledger.LedgerEntry]) -> tuple[str, ...]:
    """The cities the entries' topics name, in order of first appearance."""
    return tuple(dict.fromkeys(c for e in entries if (c := topic_city(e.topic))))


def _measurement(entry: ledger.LedgerEntry) -> str | None:
    try:
        parsed = topics.parse_device_topic(entry.topic)
    except SafecityError:
        return None
    if parsed.channel is topics.Channel.EVENT:
        return schema.EVENTS
    if parsed.channel is topics.Channel.STATUS:
        return schema.DEVICE_STATUS
    if parsed.kind not in catalogue.KINDS:
        return None
    return schema.measurement_of(parsed.kind)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if not isinstance(a, int | float) or not isinstance(b, int | float):
            return False
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


Key = tuple[str, str]  # (measurement, device id)


@dataclass
class _Sent:
    """The ledger indexed for the read-back: what each (measurement, device) should hold."""

    # (measurement, device) -> the database its points are in (a device keeps one city).
    clients: dict[Key, InfluxClient] = field(default_factory=dict)
    # (measurement, device) -> ts -> good entries sent with that timestamp
    good: dict[Key, dict[int, list[ledger.LedgerEntry]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    spans: dict[Key, list[int]] = field(default_factory=dict)
    bad: list[ledger.LedgerEntry] = field(default_factory=list)


async def check(
    entries: Sequence[ledger.LedgerEntry],
    influx: InfluxClient,
    deadletter_dirs: Sequence[Path] = (),
    *,
    cities: Sequence[str] = (),
    city: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Compare ledger entries with InfluxDB and the dead-letter stores.

    `cities`: the deployment's cities (each entry is read back from its topic's city's
    database); `city`: only that city's entries and dead letters; `progress(done, total)`
    is called after each device series read back."""
    if city is not None:
        entries = [e for e in entries if topic_city(e.topic) == city]
    report = Report(sent=len(entries))
    report.sent_by_city = dict(Counter(topic_city(e.topic) for e in entries))
    sent = _index(entries, influx, cities, report)
    await _read_back(sent, influx, report, progress)
    letters = read_deadletters(deadletter_dirs)
    if city is not None:
        letters = [r for r in letters if topic_city(str(r.get("topic", ""))) == city]
    _account_deadletters(report, letters, sent)
    return report


READ_BACK_DEVICES = 250
"""Devices read back by one statement (one statement a device: 3,000 devices took 11.3 s
to check on a loaded machine, 1.2 s this way)."""


async def _read_back(
    sent: _Sent,
    influx: InfluxClient,
    report: Report,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Read every (measurement, device) of the ledger back, a chunk of devices a statement,
    and compare each device's points of its own time span with what it sent."""
    groups: dict[tuple[str, str], list[Key]] = defaultdict(list)
    for key in sorted(sent.spans):
        groups[(sent.clients.get(key, influx).settings.database, key[0])].append(key)
    done = 0
    for (_, measurement), keys in groups.items():
        for start in range(0, len(keys), READ_BACK_DEVICES):
            chunk = keys[start : start + READ_BACK_DEVICES]
            if progress is not None:
                progress(done, len(sent.spans))
            client = sent.clients.get(chunk[0], influx)
            stored = await _read_chunk(client, measurement, chunk, sent.spans)
            for key in chunk:
                _compare(
                    report, measurement, key[1], stored.get(key[1], []), sent.good.get(key, {})
                )
            done += len(chunk)


async def _read_chunk(
    client: InfluxClient, measurement: str, keys: Sequence[Key], spans: dict[Key, list[int]]
) -> dict[str, list[dict[str, Any]]]:
    """The stored rows of `keys` (one measurement, one database), each device's held to the
    span of its own ledger entries."""
    lo = min(spans[k][0] for k in keys)
    hi = max(spans[k][1] for k in keys)
    params: dict[str, str | int] = {f"d{i}": key[1] for i, key in enumerate(keys)}
    match = " OR ".join(f"device_id = $d{i}" for i in range(len(keys)))
    # The whole last millisecond: an event is stored with a sub-ms offset.
    params.update(lo=lo * 1_000_000, hi=(hi + 1) * 1_000_000 - 1)
    found = await client.query(
        # The measurement is one of the schema's own names; all values are bound.
        # Through schema.source: `events` lives in its own retention policy.
        f"SELECT * FROM {schema.source(measurement)} "  # noqa: S608
        f"WHERE ({match}) AND time >= $lo AND time <= $hi",
        params,
    )
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for series in found:
        for row in series.rows():
            span = spans.get((measurement, str(row.get("device_id"))))
            if span is not None and span[0] <= int(row["time"]) <= span[1]:
                out[str(row["device_id"])].append(row)
    return out


def _index(
    entries: Sequence[ledger.LedgerEntry],
    influx: InfluxClient,
    cities: Sequence[str],
    report: Report,
) -> _Sent:
    """Count the entries into `report` and index them by (measurement, device)."""
    home = cities[0] if cities else ""
    sent = _Sent()
    for entry in entries:
        if entry.acknowledged:
            report.acknowledged += 1
        else:
            report.refused_by_broker += 1
        measurement = _measurement(entry)
        if entry.good:
            report.good += 1
        else:
            report.bad += 1
            if entry.acknowledged:
                sent.bad.append(entry)
        if measurement is None or entry.ts_ms is None:
            continue
        key = (measurement, entry.device_id)
        if cities and key not in sent.clients:
            named = topic_city(entry.topic)
            sent.clients[key] = influx.for_city(named if named in cities else home, cities)
        span = sent.spans.setdefault(key, [entry.ts_ms, entry.ts_ms])
        span[0] = min(span[0], entry.ts_ms)
        span[1] = max(span[1], entry.ts_ms)
        if entry.good:
            sent.good[key][entry.ts_ms].append(entry)
    return sent


def _compare(
    report: Report,
    measurement: str,
    device_id: str,
    rows: Iterable[dict[str, Any]],
    expected: dict[int, list[ledger.LedgerEntry]],
) -> None:
    """One device's stored points against what it sent: unexpected, altered, duplicated, lost."""
    seen_ts: set[int] = set()
    seqs: Counter[int] = Counter()
    for row in rows:
        ts = int(row["time"])
        report.stored += 1
        seen_ts.add(ts)
        if isinstance(row.get("seq"), int):
            seqs[row["seq"]] += 1
        sent = expected.get(ts)
        where = f"{measurement}/{device_id}@{ts}"
        if not sent:
            report.unexpected.append(where)
            continue
        if not any(_matches(row, e) for e in sent):
            report.value_mismatch.append(where)
    for seq, count in seqs.items():
        if count > 1:
            report.duplicated.append(f"{measurement}/{device_id} seq {seq} x{count}")
    for ts, sent in expected.items():
        if ts not in seen_ts and any(e.acknowledged for e in sent):
            report.lost.append(f"{measurement}/{device_id}@{ts} seq {sent[0].seq}")


def _account_deadletters(report: Report, letters: Iterable[dict[str, Any]], sent: _Sent) -> None:
    """Every bad entry dead-lettered with its reason, and no good one."""
    by_hash: dict[str, set[str]] = defaultdict(set)
    reasons: Counter[str] = Counter()
    for record in letters:
        reason = str(record.get("reason", "?"))
        reasons[reason] += 1
        by_hash[str(record.get("sha256", ""))].add(reason)
    report.deadletters_by_reason = dict(reasons)
    for entry in sent.bad:
        got = by_hash.get(entry.sha256)
        label = f"{entry.device_id} seq {entry.seq} ({entry.intended_reason})"
        if not got:
            report.bad_not_deadlettered.append(label)
        elif entry.intended_reason not in got:
            report.bad_wrong_reason.append(f"{label}: got {sorted(got)}")
    for by_ts in sent.good.values():
        for entries in by_ts.values():
            for entry in entries:
                if entry.sha256 in by_hash:
                    report.good_deadlettered.append(
                        f"{entry.device_id} seq {entry.seq}: {sorted(by_hash[entry.sha256])}"
                    )


def _matches(row: dict[str, Any], entry: ledger.LedgerEntry) -> bool:
    if entry.seq is not None and row.get("seq") != entry.seq:
        return False
    if entry.values:
        return all(_same(row.get(k), v) for k, v in entry.values.items())
    return True


def read_ledger(path: Path, upto: int | None = None) -> list[ledger.LedgerEntry]:
    """The entries of a ledger; with `upto`, only the whole lines of its first `upto` bytes
    (a ledger still being written, as it stood then)."""
    if upto is None:
        return list(ledger.read(path))
    with path.open("rb") as handle:
        data = handle.read(upto)
    return [
        ledger.LedgerEntry.from_json(line.decode("utf-8"))
        for line in data.split(b"\n")[:-1]
        if line.strip()
    ]


async def verify(
    ledger_path: Path,
    influx: InfluxClient,
    deadletter_dirs: Sequence[Path] = (),
    *,
    upto: int | None = None,
    cities: Sequence[str] | None = None,
    city: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    settle_s: float = 0.0,
    poll_s: float = 0.5,
) -> Report:
    """Read a ledger file (see `read_ledger`) and check it (see `check`) against the
    databases of `cities` (none: the client's own database, a single-city deployment).

    With `settle_s`, messages may still be on their way: the check is repeated every
    `poll_s` until two in a row have the same figures and every acknowledged message is
    stored or dead-lettered, or until a check begins `settle_s` after the first."""
    try:
        entries = read_ledger(ledger_path, upto)
    except (OSError, ValueError, KeyError) as exc:
        raise VerifyError(f"cannot read ledger {ledger_path}: {exc}") from exc
    served = tuple(cities or ())
    if city is not None and city not in (served or ledger_cities(entries)):
        named = ", ".join(served or ledger_cities(entries))
        raise VerifyError(f"city {city!r} is not in this run (cities: {named})")
    deadline = time.monotonic() + settle_s
    previous: dict[str, Any] | None = None
    while True:
        began = time.monotonic()
        report = await check(
            entries, influx, deadletter_dirs, cities=served, city=city, progress=progress
        )
        figures = report.summary()
        if began >= deadline or (_arrived(report) and figures == previous):
            return report
        previous = figures if _arrived(report) else None
        await asyncio.sleep(max(0.0, min(poll_s, deadline - time.monotonic())))


def _arrived(report: Report) -> bool:
    """Every acknowledged message is where it belongs: the good stored, the bad dead-lettered."""
    return not report.lost and not report.bad_not_deadlettered
