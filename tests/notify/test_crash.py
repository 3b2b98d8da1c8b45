"""`kill -9` of the notifier during a 500-incident storm: no page is lost, and the pages
sent twice are at most those whose attempt was in flight at the kill (the outbox records
those attempts as `interrupted`: that is the stated duplicate bound)."""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from receivers import HttpReceiver
from support import mosquitto, wait_for

from control.stack import LocalStack
from safecity import incidents as inc
from safecity import topics
from safecity.outbox import DeliveryStatus, Outbox, Result

STORM = 500
ROUTING = """city: tashkent
timezone: Asia/Tashkent
digest_max: 5
channels:
  hook: {{type: webhook, url: "{hook}", secret_file: {secret}, rate_per_s: 40}}
people:
  - {{id: ann, name: Ann, contacts: {{hook: ann}}}}
  - {{id: bob, name: Bob, contacts: {{hook: bob}}}}
rosters:
  - id: patrol
    shifts: [{{people: [ann, bob]}}]
policies:
  - id: once
    tiers: [{{roster: patrol}}]
routes:
  - policy: once
"""


def _opening(n: int) -> inc.Incident:
    opened = inc.open_incident(
        city="tashkent", district="chilonzor", rule_id="gunshot", rule_type="event",
        severity="critical", place=f"storm-{n}", devices=["gs-1"],
        opened_at=datetime(2026, 12, 7, 10, 0, tzinfo=UTC), value=None, message=f"storm {n}",
        event="gunshot",
    )  # fmt: skip
    return opened


def _publish_as_alerts(stack: LocalStack, payloads: list[str]) -> None:
    subprocess.run(
        [*mosquitto("mosquitto_pub", stack, "_alerts"), "-q", "1",
         "-t", topics.incident_topic("tashkent", "open"), "-l"],
        input="\n".join(payloads) + "\n", text=True, check=True, timeout=60,
    )  # fmt: skip


def _pages(hook: HttpReceiver) -> list[tuple[str, str]]:
    return [(b["to"], p["incident_id"]) for b in hook.received for p in b["pages"]]


def test_kill_9_mid_storm_loses_nothing_and_duplicates_within_the_bound(
    stack: LocalStack,
    influx_db: str,
    start_notify: Callable[..., Any],
    hook: HttpReceiver,
    tmp_path: Path,
) -> None:
    (tmp_path / "hook.secret").write_text(hook.secret)
    routing = tmp_path / "routing.yaml"
    routing.write_text(ROUTING.format(hook=hook.url, secret=tmp_path / "hook.secret"))
    env = {
        "SAFECITY_NOTIFY_ROUTING_FILE": str(routing),
        "SAFECITY_NOTIFY_DIR": str(tmp_path / "notify"),
        "SAFECITY_ACK_KEY_FILE": str(tmp_path / "ack.key"),
    }
    first = start_notify(influx_db, notify_id="notify-storm", **env)
    storm = [_opening(n) for n in range(STORM)]
    _publish_as_alerts(stack, [inc.change_of(i).payload().decode() for i in storm])
    wait_for(lambda: len(_pages(hook)) >= 150, 60, "the storm under way")
    first.process.kill()
    killed_at = len(_pages(hook))
    assert killed_at < 2 * STORM, "the kill came too late to test anything"
    start_notify(influx_db, notify_id="notify-storm", **env)
    wanted = {(who, i.id) for who in ("ann", "bob") for i in storm}
    wait_for(lambda: wanted <= set(_pages(hook)), 120, "every page after the restart")
    box = Outbox(tmp_path / "notify" / "tashkent.outbox.db", owner="test-reader")
    wait_for(lambda: box.counts()[DeliveryStatus.PENDING] == 0, 30, "the outbox drained")
    counts = Counter(_pages(hook))
    duplicates = sum(n - 1 for n in counts.values())
    interrupted = [
        e for e in box.entries(limit=10_000)
        if any(a.result is Result.INTERRUPTED for a in box.attempts(e.key))
    ]  # fmt: skip
    assert set(counts) == wanted  # lost 0, nothing unexpected
    print(f"killed after {killed_at} pages; duplicates {duplicates}, bound {len(interrupted)}")
    assert duplicates <= len(interrupted)
    assert box.counts()[DeliveryStatus.DELIVERED] == 2 * STORM
