"""The notifier as a real process, fed by the real alerts service and the real API over
the broker's lifecycle topics, paging real receivers: a gunshot and a panic button nearby
page tier 1; the acknowledgement link (served by the real API) stops the escalation
within seconds and the incident's log names who acknowledged and how; acknowledging
through the API does the same, and resolving sends everyone paged the resolution notice.
The notifier's look at the incident log is an hour apart here: only the broker can do it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from receivers import HttpReceiver, SmtpReceiver
from support import mosquitto_pub, wait_for

from control.stack import LocalStack
from safecity import registry, topics
from safecity.readings import format_ts

CITY = registry.default_city()
GUN = CITY.select(kind="gunshot")[0]
# The panic button nearest to the gunshot sensor (squared degrees are enough to rank).
PANIC = min(
    CITY.select(kind="panic_button"),
    key=lambda d: (d.location[0] - GUN.location[0]) ** 2 + (d.location[1] - GUN.location[1]) ** 2,
)
RULES = """city: tashkent
rules:
  - {id: panic, type: event, event: panic, episode: 15m, severity: critical, message: Panic}
  - {id: gunshot, type: event, event: gunshot, group_by: district, episode: 15m,
     severity: critical, message: Gunshot detected}
"""
ROUTING = """city: tashkent
timezone: Asia/Tashkent
channels:
  hook: {{type: webhook, url: "{hook}/pages", secret_file: {secret}}}
  tg: {{type: telegram, base_url: "{tg}", token_file: {token}}}
  mail: {{type: smtp, host: 127.0.0.1, port: {smtp}, starttls: false,
          sender: safecity@example.org}}
people:
  - {{id: ann, name: Ann, contacts: {{hook: ann, tg: "1001", mail: ann@example.org}}}}
  - {{id: bob, name: Bob, contacts: {{hook: bob}}}}
rosters:
  - id: patrol
    shifts: [{{people: [ann]}}]
policies:
  - id: urgent
    tiers:
      - {{roster: patrol, repeat_every: 10m, repeats: 1}}
      - {{after: 10m, people: [bob]}}
routes:
  - match: {{severities: [critical]}}
    policy: urgent
"""


@pytest.fixture
def smtp() -> Iterator[SmtpReceiver]:
    server = SmtpReceiver()
    yield server
    server.close()


@pytest.fixture
def telegram() -> Iterator[HttpReceiver]:
    server = HttpReceiver("telegram", secret="123:abc")
    yield server
    server.close()


def _event(kind: str, ts: datetime, details: dict[str, Any]) -> str:
    return json.dumps({"ts": format_ts(ts), "seq": 1, "type": kind, "severity": "critical",
                       "details": details})  # fmt: skip


def _routing(tmp_path: Path, hook: HttpReceiver, telegram: HttpReceiver, smtp: int) -> Path:
    (tmp_path / "hook.secret").write_text(hook.secret + "\n")
    (tmp_path / "tg.token").write_text(telegram.secret + "\n")
    path = tmp_path / "routing.yaml"
    path.write_text(ROUTING.format(hook=hook.url, tg=telegram.url, secret=tmp_path / "hook.secret",
                                   token=tmp_path / "tg.token", smtp=smtp))  # fmt: skip
    return path


def test_a_gunshot_and_a_panic_page_tier_1_and_the_link_stops_the_escalation(
    stack: LocalStack,
    influx_db: str,
    start_alerts: Callable[..., Any],
    start_api: Callable[..., Any],
    start_notify: Callable[..., Any],
    hook: HttpReceiver,
    telegram: HttpReceiver,
    smtp: SmtpReceiver,
    tmp_path: Path,
) -> None:
    notify_dir = tmp_path / "notify"
    shared = {
        "SAFECITY_NOTIFY_DIR": str(notify_dir),
        "SAFECITY_ACK_KEY_FILE": str(tmp_path / "ack.key"),
        "SAFECITY_ACK_SPENT_FILE": str(notify_dir / "ack-spent.db"),
    }
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    start_alerts(influx_db, SAFECITY_ALERTS_RULES_FILE=str(rules))
    api = start_api(influx_db, **shared)
    notifier = start_notify(
        influx_db,
        SAFECITY_NOTIFY_ROUTING_FILE=str(_routing(tmp_path, hook, telegram, smtp.port)),
        SAFECITY_NOTIFY_ACK_BASE_URL=api.url,
        SAFECITY_NOTIFY_REFRESH_INTERVAL="3600",
        **shared,
    )
    now = datetime.now(UTC)
    lon, lat = GUN.location
    mosquitto_pub(stack, topics.event_topic("tashkent", GUN.district, GUN.kind, GUN.id),
                  _event("gunshot", now, {"rounds": 2, "lat": lat, "lon": lon, "accuracy_m": 15.0,
                                          "sensors": 6, "confidence": 0.9}))  # fmt: skip
    mosquitto_pub(stack, topics.event_topic("tashkent", PANIC.district, PANIC.kind, PANIC.id),
                  _event("panic", now, {"button": "b1"}))  # fmt: skip
    # Two pages: two messages, or one digest when both openings came in one batch.
    pages = wait_for(lambda: len(_pages(hook)) >= 2 and _pages(hook), 30, "tier-1 pages")
    assert {body["to"] for body in hook.received} == {"ann"}
    by_rule = {page["rule_id"]: page for page in pages}
    assert set(by_rule) == {"gunshot", "panic"}
    assert all(p["tier"] == 1 and p["repeat"] == 0 for p in by_rule.values())
    wait_for(lambda: "Gunshot" in " ".join(m["text"] for m in telegram.received), 30, "telegram")
    wait_for(lambda: "Panic" in " ".join(m["text"] for m in telegram.received), 30, "telegram")
    assert all(m["chat_id"] == "1001" for m in telegram.received)
    panic = by_rule["panic"]
    link = panic["ack_url"]
    assert link.startswith(f"{api.url}/v1/ack/")
    _acknowledge_through_the_link(api, link, panic["incident_id"])
    timeline = _timeline(api, panic["incident_id"])
    by_step = {(n["person"], n["tier"], n["repeat"], n["channel"]): n for n in timeline}
    first = by_step[("ann", 1, 0, "hook")]
    assert first["status"] == "delivered" and first["attempts"] == 1
    assert first["latency_s"] is not None and first["history"][0]["result"] == "delivered"
    later = [n for n in timeline if (n["tier"], n["repeat"]) != (1, 0)]
    assert {(n["person"], n["tier"]) for n in later} == {("ann", 1), ("bob", 2)}

    wait_for(lambda: _stopped(api, panic["incident_id"]), 5, "escalation cancelled")
    later = [n for n in _timeline(api, panic["incident_id"]) if (n["tier"], n["repeat"]) != (1, 0)]
    assert {n["detail"] for n in later} == {"acknowledged by ann (via hook (acknowledgement link))"}
    # The gunshot was not acknowledged: its escalation is still pending.
    gunshot = by_rule["gunshot"]["incident_id"]
    assert any(n["status"] == "pending" for n in _timeline(api, gunshot))
    metrics = httpx.get(f"{notifier.metrics_url}/metrics", timeout=5).text
    assert 'safecity_notify_first_delivery_seconds_count{channel="hook"} 2.0' in metrics
    assert 'safecity_notify_attempts_total{channel="hook",result="delivered"}' in metrics
    _acknowledge_and_resolve_through_the_api(api, gunshot, hook, telegram, smtp)


def _pages(hook: HttpReceiver) -> list[dict[str, Any]]:
    return [page for body in hook.received for page in body["pages"]]


def _stopped(api: Any, incident_id: str) -> bool:
    """Every page after tier 1's first is cancelled."""
    later = [n for n in _timeline(api, incident_id) if (n["tier"], n["repeat"]) != (1, 0)]
    return bool(later) and all(n["status"] == "cancelled" for n in later)


def _acknowledge_and_resolve_through_the_api(
    api: Any, incident_id: str, hook: HttpReceiver, telegram: HttpReceiver, smtp: SmtpReceiver
) -> None:
    """An operator acknowledges through the API: the escalation stops within seconds;
    resolving then tells everyone who was paged, on each channel that reached them."""
    base = f"{api.url}/v1/incidents/{incident_id}"
    acked = httpx.post(f"{base}/ack", headers=api.headers, json={"note": "on it"}, timeout=10)
    assert acked.status_code == 200, acked.text
    wait_for(lambda: _stopped(api, incident_id), 5, "escalation cancelled by the API's ack")
    pages_before = len(_pages(hook))
    done = httpx.post(f"{base}/resolve", headers=api.headers, json={"note": "suspect held"},
                      timeout=10)  # fmt: skip
    assert done.status_code == 200, done.text

    def notices() -> list[dict[str, Any]]:
        return _pages(hook)[pages_before:]

    seen = wait_for(lambda: notices() or None, 5, "the resolution notice on the webhook")
    operator = done.json()["transitions"][-1]["by"]  # the API key's id
    assert [(p["kind"], p["incident_id"], p["person"], p["by"], p["note"]) for p in seen] == [
        ("resolved", incident_id, "ann", operator, "suspect held")
    ]
    assert hook.received[-1]["to"] == "ann"
    assert "[RESOLVED]" in hook.received[-1]["subject"]
    wait_for(
        lambda: any(
            "resolved" in m["text"] and incident_id in m["text"] for m in telegram.received
        ),
        5,
        "the resolution notice on telegram",
    )
    mails = wait_for(lambda: _mails(smtp, b"Subject: [RESOLVED] gunshot"), 5, "the notice mail")
    assert [to for to, _ in mails] == [["ann@example.org"]]
    assert f"by {operator} (suspect held)".encode() in mails[0][1]
    assert _mails(smtp, b"Subject: [CRITICAL]")  # the pages came by mail too
    timeline = _timeline(api, incident_id)
    told = {(n["kind"], n["channel"], n["status"]) for n in timeline if n["kind"] == "resolved"}
    assert told == {
        ("resolved", "hook", "delivered"),
        ("resolved", "tg", "delivered"),
        ("resolved", "mail", "delivered"),
    }


def _mails(smtp: SmtpReceiver, marker: bytes) -> list[tuple[list[str], bytes]]:
    return [(to, raw) for to, raw in smtp.mails if marker in raw]


def _acknowledge_through_the_link(api: Any, link: str, incident_id: str) -> None:
    page = httpx.get(link, timeout=10)
    assert page.status_code == 200 and incident_id in page.text
    body, _, mac = link.rpartition("/")[2].partition(".")
    forged = httpx.post(f"{api.url}/v1/ack/{body}.{mac[::-1]}", timeout=10)
    assert forged.status_code == 403 and "forged" in forged.json()["detail"]
    done = httpx.post(link, timeout=10)
    assert done.status_code == 200, done.text
    assert done.json() == {"incident_id": incident_id, "state": "acknowledged", "by": "ann",
                           "channel": "hook"}  # fmt: skip
    again = httpx.post(link, timeout=10)
    assert again.status_code == 409 and "reused" in again.json()["detail"]
    incident = httpx.get(f"{api.url}/v1/incidents/{incident_id}", headers=api.headers, timeout=10)
    last = incident.json()["transitions"][-1]
    assert (last["state"], last["by"], last["note"]) == (
        "acknowledged",
        "ann",
        "via hook (acknowledgement link)",
    )
    audit = [
        json.loads(line)
        for line in Path(api.env["SAFECITY_AUDIT_LOG_FILE"]).read_text().splitlines()
    ]
    outcomes = [(a["outcome"], a["status"]) for a in audit if a.get("scope") == "ack-link"]
    assert outcomes == [("forged", 403), ("acknowledged", 200), ("reused", 409)]


def _timeline(api: Any, incident_id: str) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{api.url}/v1/incidents/{incident_id}/notifications", headers=api.headers, timeout=10
    )
    assert answer.status_code == 200, answer.text
    timeline: list[dict[str, Any]] = answer.json()
    return timeline
