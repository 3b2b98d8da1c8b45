"""An incident's delivery timeline in the console (Debian's Chromium): the real alerts
service opens a panic incident, the real notifier pages a webhook receiver (one address
takes it, one refuses it), and the console shows who was told on which channel when and
how it went; acknowledging in the console then shows the acknowledgement and the rest of
the escalation cancelled."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from playwright.sync_api import BrowserContext, Locator
from receivers import HttpReceiver
from support import mosquitto_pub

from control.stack import LocalStack
from safecity import topics
from safecity.readings import format_ts
from safecity.registry import default_city

RULES = """city: tashkent
rules:
  - {id: panic, type: event, event: panic, episode: 15m, severity: critical, message: Panic}
"""
# `bad` signs with a secret the receiver does not know: refused (401), failed at once.
ROUTING = """city: tashkent
timezone: Asia/Tashkent
channels:
  hook: {{type: webhook, url: "{url}/pages", secret_file: {good}}}
  bad: {{type: webhook, url: "{url}/pages", secret_file: {bad}}}
people:
  - {{id: ann, name: Ann, contacts: {{hook: ann, bad: ann-old}}}}
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
  - policy: urgent
"""


def _routing(tmp_path: Path, hook: HttpReceiver) -> Path:
    (tmp_path / "good.secret").write_text(hook.secret)
    (tmp_path / "bad.secret").write_text("not-the-secret")
    path = tmp_path / "routing.yaml"
    path.write_text(
        ROUTING.format(url=hook.url, good=tmp_path / "good.secret", bad=tmp_path / "bad.secret")
    )
    return path


def _row(timeline: Locator, status: str, **data: str) -> Locator:
    """The timeline's row of that status (and channel/person)."""
    attrs = "".join(f'[data-{k}="{v}"]' for k, v in data.items())
    return timeline.locator(f'li[data-status="{status}"]{attrs}')


def test_the_console_shows_who_was_notified_how_and_the_acknowledgement(
    stack: LocalStack,
    influx_db: str,
    start_alerts: Callable[..., Any],
    start_api: Callable[..., Any],
    start_notify: Callable[..., Any],
    hook: HttpReceiver,
    browser: BrowserContext,
    tmp_path: Path,
) -> None:
    shared = {
        "SAFECITY_NOTIFY_DIR": str(tmp_path / "notify"),
        "SAFECITY_ACK_KEY_FILE": str(tmp_path / "ack.key"),
    }
    (tmp_path / "rules.yaml").write_text(RULES)
    start_alerts(influx_db, SAFECITY_ALERTS_RULES_FILE=str(tmp_path / "rules.yaml"))
    api = start_api(influx_db, **shared)
    start_notify(
        influx_db,
        SAFECITY_NOTIFY_ROUTING_FILE=str(_routing(tmp_path, hook)),
        SAFECITY_NOTIFY_ACK_BASE_URL=api.url,
        **shared,
    )
    page = browser.pages[0] if browser.pages else browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.goto(f"{api.url}/?key={api.api_key}")
    page.wait_for_function("() => document.body.dataset.ready === 'true'")

    panic = default_city().select(kind="panic_button")[0]
    event = {"ts": format_ts(datetime.now(UTC)), "seq": 1, "type": "panic",
             "severity": "critical", "details": {"button": "b1"}}  # fmt: skip
    mosquitto_pub(stack, topics.event_topic("tashkent", panic.district, panic.kind, panic.id),
                  json.dumps(event))  # fmt: skip
    item = page.locator("#feed li[data-incident]").first
    item.wait_for()
    ident = item.get_attribute("data-incident")
    timeline = page.locator(f'details.timeline[data-incident="{ident}"]')
    timeline.locator("summary").click()
    # Who was told, on which channel, how it went: ann's hook took it, her old address
    # refused it (failed), the reminder and bob's tier 2 wait; the opening is there too.
    _row(timeline, "delivered", channel="hook", person="ann").wait_for()
    failed = _row(timeline, "failed", channel="bad", person="ann")
    failed.wait_for()
    assert "failed after 1 attempt: HTTP 401" in failed.inner_text()
    assert (
        "tier 1 → ann via hook (ann): delivered (1 attempt"
        in _row(timeline, "delivered", channel="hook").inner_text()
    )
    assert _row(timeline, "pending", person="bob").count() == 1
    assert _row(timeline, "open").inner_text().endswith("opened by alerts")
    assert hook.received and hook.received[0]["to"] == "ann"

    # Acknowledged in the console: the timeline shows it, and the rest is cancelled.
    item.locator('button[data-action="ack"]').click()
    key_id = api.api_key.split("_")[1]
    assert f"acknowledged by {key_id}" in _row(timeline, "acknowledged").inner_text()
    _row(timeline, "cancelled", person="bob").wait_for()
    assert _row(timeline, "pending").count() == 0
    assert timeline.evaluate("d => d.open") is True  # it stayed open through the re-renders
    assert problems == []
