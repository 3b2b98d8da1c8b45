"""The incident store: an append-only transition log in InfluxDB, folded on read.

Every transition is one point appended to the `incident_transitions` measurement
(who, when, note); nothing is ever updated in place. An opening also writes its alert
to `alerts`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from safecity.catalogue import Severity
from safecity.errors import IncidentError, TransitionError
from safecity.incidents.model import Incident, State, Transition, advance
from safecity.influx import InfluxClient
from safecity.lineprotocol import FieldValue, Point, encode_many
from safecity.readings import epoch_ms, format_ts, from_epoch_ms, truncate_ms
from safecity.schema import ALERTS as _ALERTS
from safecity.schema import INCIDENT_TRANSITIONS, retention_policy_of, source

ALERTS = _ALERTS
TRANSITIONS = INCIDENT_TRANSITIONS
ALERT_TAGS = ("city", "district", "rule_id", "severity")
TRANSITION_TAGS = ("city", "district", "rule_id", "severity", "state")


def _ns(at_ms: int, *salt: object) -> int:
    """Nanosecond timestamp: ms plus a stable per-record offset so that two records with
    the same tags in the same millisecond never overwrite each other."""
    digest = hashlib.sha256("|".join(str(s) for s in salt).encode()).digest()
    return at_ms * 1_000_000 + int.from_bytes(digest[:4], "big") % 1_000_000


def transition_point(incident: Incident, step: Transition) -> Point:
    """The `incident_transitions` point of one step (time in ns, see `_ns`)."""
    fields: dict[str, FieldValue] = {
        "incident_id": incident.id,
        "seq": step.seq,
        "from_state": step.from_state.value if step.from_state else "",
        "by": step.by,
        "note": step.note,
        "by_subject": step.by_subject,
        "by_name": step.by_name,
        "place": incident.place,
        "devices": ",".join(incident.devices),
        "rule_type": incident.rule_type,
        "message": incident.message,
        "opened_at_ms": epoch_ms(incident.opened_at),
        # Seconds from opening to this step: the time to acknowledge on the
        # `acknowledged` step, to resolve on `resolved` (what Grafana aggregates).
        "elapsed_s": max(0.0, (step.at - incident.opened_at).total_seconds()),
    }
    if incident.value is not None:
        fields["value"] = float(incident.value)
    if incident.event is not None:
        fields["event"] = incident.event
    tags = {
        "city": incident.city,
        "district": incident.district,
        "rule_id": incident.rule_id,
        "severity": incident.severity.value,
        "state": step.state.value,
    }
    at_ms = epoch_ms(step.at)
    return Point(TRANSITIONS, tags, fields, _ns(at_ms, incident.id, step.seq))


@dataclass(frozen=True, slots=True)
class Alert:
    """A fired alert: what the service publishes and stores when an incident opens."""

    alert_id: str
    incident: Incident

    def payload(self) -> dict[str, Any]:
        """The JSON body published on safecity/v1/{city}/_alerts/{severity}."""
        inc = self.incident
        return {
            "alert_id": self.alert_id,
            "incident_id": inc.id,
            "rule_id": inc.rule_id,
            "rule_type": inc.rule_type,
            "severity": inc.severity.value,
            "city": inc.city,
            "district": inc.district,
            "devices": list(inc.devices),
            "started_at": inc.model_dump(mode="json")["opened_at"],
            "value": inc.value,
            "message": inc.message,
            "event": inc.event,
        }

    def point(self) -> Point:
        """The `alerts` point (time = started_at in event time, ns; see `_ns`)."""
        inc = self.incident
        fields: dict[str, FieldValue] = {
            "alert_id": self.alert_id,
            "incident_id": inc.id,
            "devices": ",".join(inc.devices),
            "message": inc.message,
            "rule_type": inc.rule_type,
            "place": inc.place,
        }
        if inc.value is not None:
            fields["value"] = float(inc.value)
        if inc.event is not None:
            fields["event"] = inc.event
        tags = {
            "city": inc.city,
            "district": inc.district,
            "rule_id": inc.rule_id,
            "severity": inc.severity.value,
        }
        return Point(ALERTS, tags, fields, _ns(epoch_ms(inc.opened_at), self.alert_id))


def alert_for(incident: Incident) -> Alert:
    """The alert that announces an incident's opening (id derived from the incident's)."""
    return Alert("alr-" + incident.id.removeprefix("inc-"), incident)


# What every stored step has, and what the opening step has besides.
_STEP_FIELDS = ("incident_id", "seq", "state", "time")
_OPENING_FIELDS = ("rule_id", "severity", "opened_at_ms")


def _from_rows(rows: Iterable[dict[str, Any]]) -> dict[str, Incident]:
    """Fold transition rows (any order) into incidents; the log is replayed through `advance`."""
    by_id: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        # InfluxDB 1.x stores each field apart: a query racing a write can see part of a
        # step. Such a row is left out; the next read sees the whole step.
        if any(row.get(f) is None for f in _STEP_FIELDS):
            continue
        by_id.setdefault(str(row["incident_id"]), []).append(row)
    out: dict[str, Incident] = {}
    for ident, steps in by_id.items():
        steps.sort(key=lambda r: (int(r["seq"]), int(r["time"])))
        first = steps[0]
        if (
            int(first["seq"]) != 0
            or first["state"] != State.OPEN.value
            or any(first.get(f) is None for f in _OPENING_FIELDS)
        ):
            continue  # the opening is not (wholly) stored yet (a concurrent writer): skip for now
        value = first.get("value")
        incident = Incident(
            id=ident,
            city=first["city"],
            district=first["district"],
            rule_id=first["rule_id"],
            rule_type=first.get("rule_type") or "",
            severity=Severity(first["severity"]),
            place=first.get("place") or "",
            devices=tuple(d for d in (first.get("devices") or "").split(",") if d),
            opened_at=from_epoch_ms(int(first["opened_at_ms"])),
            value=None if value is None else float(value),
            message=first.get("message") or "",
            event=first.get("event") or None,
            transitions=(
                Transition(
                    incident_id=ident,
                    seq=0,
                    state=State.OPEN,
                    from_state=None,
                    at=from_epoch_ms(int(first["time"])),
                    by=first.get("by") or "alerts",
                    note=first.get("note") or "",
                ),
            ),
        )
        for row in steps[1:]:
            if int(row["seq"]) != len(incident.transitions):
                continue  # a duplicate step from a racing writer: the first one stands
            try:
                incident = advance(
                    incident,
                    row["state"],
                    row.get("by") or "unknown",
                    from_epoch_ms(int(row["time"])),
                    row.get("note") or "",
                    (row.get("by_subject") or "", row.get("by_name") or ""),
                )
            except TransitionError:
                continue
        out[ident] = incident
    return out


class IncidentStore:
    """Incidents in InfluxDB: an append-only transition log, folded on read."""

    def __init__(self, influx: InfluxClient) -> None:
        self.influx = influx

    async def _rows(self, where: str, params: dict[str, str | int]) -> list[dict[str, Any]]:
        # `where` is one of this class's own constant conditions; values are bound. The
        # log lives in its retention policy (`incidents`); `source` also reads the default.
        query = f"SELECT * FROM {source(TRANSITIONS)} WHERE {where}"  # noqa: S608
        series = await self.influx.query(query, params)
        rows: list[dict[str, Any]] = []
        for s in series:
            rows.extend(s.rows())
        return rows

    async def load(self, city: str) -> dict[str, Incident]:
        """Every incident of a city (within the retention policy), by id."""
        return _from_rows(await self._rows('"city" = $city', {"city": city}))

    async def query(
        self,
        city: str,
        opened_from: datetime,
        opened_to: datetime,
        *,
        district: str | None = None,
        rule_id: str | None = None,
        severity: str | None = None,
    ) -> dict[str, Incident]:
        """Incidents of a city opened in [opened_from, opened_to), by tag filters.

        Every transition is at or after its incident's opening, so the scan starts at
        `opened_from` (bounded) and reaches to now (later transitions count)."""
        where = '"city" = $city AND time >= $from AND "opened_at_ms" >= $from_ms'
        where += ' AND "opened_at_ms" < $to_ms'
        params: dict[str, str | int] = {
            "city": city,
            "from": format_ts(opened_from),
            "from_ms": epoch_ms(opened_from),
            "to_ms": epoch_ms(opened_to),
        }
        for tag, value in (("district", district), ("rule_id", rule_id), ("severity", severity)):
            if value is not None:
                where += f' AND "{tag}" = ${tag}'
                params[tag] = value
        return _from_rows(await self._rows(where, params))

    async def get(self, ident: str) -> Incident:
        """One incident by id; IncidentError if unknown."""
        found = _from_rows(await self._rows('"incident_id" = $id', {"id": ident}))
        if ident not in found:
            raise IncidentError(f"no incident {ident!r}")
        return found[ident]

    async def append(self, points: Sequence[Point]) -> None:
        """Write transition/alert points (ns precision); raises StorageError subclasses."""
        by_policy: dict[str | None, list[Point]] = {}
        for point in points:
            by_policy.setdefault(retention_policy_of(point.measurement), []).append(point)
        for policy, group in by_policy.items():
            await self.influx.write(encode_many(group), precision="ns", rp=policy)

    async def open(self, incident: Incident) -> Alert:
        """Store a new incident's opening and its alert; idempotent (deterministic ids)."""
        alert = alert_for(incident)
        await self.append([transition_point(incident, incident.transitions[0]), alert.point()])
        return alert

    async def transition(
        self,
        ident: str,
        state: State | str,
        by: str,
        note: str = "",
        at: datetime | None = None,
        person: tuple[str, str] = ("", ""),
    ) -> Incident:
        """Append one transition after checking it against the stored log (`person`: the
        subject and name of a person who took it)."""
        incident = await self.get(ident)
        if at is None:
            now = datetime.now(UTC)
            at = truncate_ms(now)  # the log keeps ms
        updated = advance(incident, state, by, at, note, person)
        await self.append([transition_point(updated, updated.transitions[-1])])
        return updated
