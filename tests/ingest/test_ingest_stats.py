"""ingest_stats: what a real ingest writes every 10 s matches what it did, across a restart."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from faults import Ingest, new_db
from support import influx_rows, mosquitto_pub, wait_for

from control.stack import LocalStack
from safecity import schema, topics
from safecity.readings import format_ts
from safecity.registry import Device, default_city

CITY = default_city()
NOISE = CITY.select(kind="noise")


def topic(device: Device, district: str | None = None, device_id: str | None = None) -> str:
    return topics.telemetry_topic(
        CITY.id, district or device.district, "noise", device_id or device.id
    )


def payload(base: datetime, seq: int, laeq: float = 55.0) -> str:
    """A noise reading `seq` milliseconds after `base`."""
    return json.dumps(
        {
            "ts": format_ts(base + timedelta(milliseconds=seq)),
            "seq": seq,
            "values": {"laeq": laeq, "lamax": laeq + 10, "la90": laeq - 8},
        }
    )


def publish_mix(stack: LocalStack, seq0: int) -> int:
    """Good readings and every kind of bad one, timed from an hour ago; return how many
    messages were published."""
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=60)
    sent = 0

    def pub(t: str, *bodies: str) -> None:
        nonlocal sent
        mosquitto_pub(stack, t, *bodies)
        sent += len(bodies)

    for i, device in enumerate(NOISE[:-1]):
        pub(topic(device), *(payload(base, seq0 + 10 * i + k) for k in range(3)))
    first, second = NOISE[0], NOISE[1]
    pub(topic(first), "{nope", "[1,")  # bad_json
    pub(topic(first), payload(base, seq0 + 900, laeq=400.0))  # out_of_range
    pub(topic(first, device_id="noise-ghost-7"), payload(base, seq0 + 901))  # unknown_device
    elsewhere = next(d.id for d in CITY.districts if d.id != second.district)
    pub(topic(second, district=elsewhere), payload(base, seq0 + 902))  # identity_mismatch
    pub(topic(second), payload(base, seq0 + 10, laeq=60.0))  # conflicting_duplicate of seq0+10
    # A flood: 40 at once against a burst of 20 (rate 1/s).
    pub(topic(NOISE[-1]), *(payload(base, seq0 + 1000 + k) for k in range(40)))
    return sent


def dead_letters(ingest: Ingest) -> Counter[str]:
    path = ingest.deadletter_dir / "deadletters.jsonl"
    if not path.exists():
        return Counter()
    return Counter(json.loads(line)["reason"] for line in path.read_text().splitlines())


def stats_rows(stack: LocalStack, db: str) -> list[dict[str, Any]]:
    return influx_rows(stack, db, f'SELECT * FROM "{schema.INGEST_STATS}"')  # noqa: S608


def sums(rows: list[dict[str, Any]], prefix: str = "") -> dict[str, int]:
    names = [n for n, kind, _ in schema.INGEST_STATS_FIELDS if kind == "int"]
    return {n: sum(int(r[n]) for r in rows) for n in names if n.startswith(prefix)}


def test_ingest_stats_deltas_match_dead_letters_and_writes_across_a_restart(
    stack, ingest_factory
) -> None:
    db = new_db(stack)
    ingest = ingest_factory(
        stack, db, "stats", SAFECITY_RATE_LIMIT="1", SAFECITY_RATE_BURST="20"
    ).start()
    sent = publish_mix(stack, 1_000_000)

    def consistent(expected_sent: int) -> bool:
        letters = dead_letters(ingest)
        rows = stats_rows(stack, db)
        total = sums(rows)
        by_reason = {r: total[f"rejected_{r}"] for r in schema.REJECT_REASONS}
        return (
            total["received"] == expected_sent
            and total["rejected"] == sum(letters.values()) == sum(by_reason.values())
            and by_reason == {r: letters[r] for r in schema.REJECT_REASONS}
            and total["written"] == expected_sent - sum(letters.values())
        )

    wait_for(lambda: consistent(sent), 45, "ingest_stats totals matching what ingest did")
    letters = dead_letters(ingest)
    for reason in (
        "bad_json",
        "out_of_range",
        "unknown_device",
        "identity_mismatch",
        "conflicting_duplicate",
        "rate_limited",
    ):
        assert letters[reason] > 0, reason
    stored = influx_rows(stack, db, 'SELECT count("laeq") FROM "noise"')[0]["count"]
    assert stored == sent - sum(letters.values())

    # The attacks among them are security events, one per batch and device, counted.
    security = influx_rows(stack, db, 'SELECT * FROM "security"."security_events"')
    counted: Counter[str] = Counter()
    for row in security:
        counted[row["type"]] += row["count"]
        assert row["source"] == "ingest" and row["worker_id"] == "stats"
    assert counted == {r: letters[r] for r in schema.INGEST_SECURITY_REASONS if letters[r]}

    # Every point carries exactly the contract's fields with the contract's types.
    types = {"int": "integer", "float": "float", "bool": "boolean"}
    keys = influx_rows(stack, db, f'SHOW FIELD KEYS FROM "{schema.INGEST_STATS}"')
    assert {k["fieldKey"]: k["fieldType"] for k in keys} == {
        name: types[kind] for name, kind, _ in schema.INGEST_STATS_FIELDS
    }
    rows = stats_rows(stack, db)
    assert {(r["city"], r["worker_id"]) for r in rows} == {(CITY.id, "stats")}
    assert rows[-1]["mqtt_connected"] is True and rows[-1]["spool_messages"] == 0

    # A graceful restart writes the counts since the last point; the new process counts
    # from zero again, so the sums stay exact.
    ingest.stop()
    ingest.start()
    more = publish_mix(stack, 2_000_000)
    wait_for(lambda: consistent(sent + more), 45, "ingest_stats totals after the restart")
