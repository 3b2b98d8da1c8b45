"""Routing files: the shipped default, errors with their line, rosters and quiet hours."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notify import routing
from safecity.catalogue import Severity
from safecity.errors import RoutingError

GOOD = """city: tashkent
timezone: Asia/Tashkent
channels:
  console: {type: local}
  hook: {type: webhook, url: "http://127.0.0.1:9/x", secret_file: /nonexistent}
people:
  - {id: ann, name: Ann, contacts: {console: ann, hook: ann}}
  - {id: bob, name: Bob, contacts: {console: bob}}
rosters:
  - id: patrol
    shifts:
      - {days: [mon, tue, wed, thu, fri], start: "08:00", end: "20:00", people: [ann]}
      - {start: "20:00", end: "08:00", people: [bob]}
policies:
  - id: urgent
    tiers:
      - {roster: patrol, repeat_every: 5m, repeats: 2}
      - {after: 10m, people: [bob]}
routes:
  - match: {severities: [critical], districts: [chilonzor]}
    policy: urgent
quiet_hours: {start: "22:00", end: "07:00"}
"""


def test_the_shipped_routing_loads_for_any_city() -> None:
    r = routing.load_for("almaty", "Asia/Almaty")
    assert r.city == "almaty" and r.timezone == "Asia/Almaty"
    assert r.route("x", Severity.CRITICAL, "gunshot") is not None
    assert set(r.channels) == {"console"}


def _error(text: str) -> str:
    with pytest.raises(RoutingError) as exc:
        routing.loads(text, "r.yaml")
    return str(exc.value)


def test_an_unknown_channel_is_named_with_its_line() -> None:
    bad = GOOD.replace("contacts: {console: bob}", "contacts: {pager: bob}")
    assert _error(bad) == "r.yaml:8: unknown channel 'pager' (console, hook)"


def test_schema_errors_name_their_line() -> None:
    assert _error(GOOD.replace("repeats: 2", "repeats: many")).startswith(
        "r.yaml:17: policies[0].tiers[0].repeats:"
    )
    assert "r.yaml:2: timezone: unknown time zone 'Mars/Base'" in _error(
        GOOD.replace("Asia/Tashkent", "Mars/Base")
    )
    assert "r.yaml:21: unknown policy 'calm'" in _error(
        GOOD.replace("policy: urgent", "policy: calm")
    )
    assert _error("city: [\n").startswith("r.yaml:2: not valid YAML")
    assert "unknown person 'zed'" in _error(GOOD.replace("people: [bob]}", "people: [zed]}"))


def test_rosters_follow_the_city_clock() -> None:
    r = routing.loads(GOOD)
    patrol = r.roster("patrol")
    tz = r.zone
    assert patrol.on_call(datetime(2026, 12, 7, 9, 0, tzinfo=tz)) == ("ann",)  # a Monday
    assert patrol.on_call(datetime(2026, 12, 7, 23, 0, tzinfo=tz)) == ("bob",)
    assert patrol.on_call(datetime(2026, 12, 8, 3, 0, tzinfo=tz)) == ("bob",)
    assert patrol.on_call(datetime(2026, 12, 12, 9, 0, tzinfo=tz)) == ()  # Saturday morning


def test_quiet_hours_delay_only_low_pages() -> None:
    r = routing.loads(GOOD)
    late = datetime(2026, 12, 7, 23, 30, tzinfo=r.zone)
    assert r.quiet_until(Severity.CRITICAL, late) == late
    woken = r.quiet_until(Severity.LOW, late)
    assert woken == datetime(2026, 12, 8, 7, 0, tzinfo=r.zone)
    noon = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    assert r.quiet_until(Severity.LOW, noon) == noon


@given(st.text(max_size=300))
def test_any_text_is_a_routing_or_a_routing_error(text: str) -> None:
    outcome: object
    try:
        outcome = routing.loads(text)
    except RoutingError as exc:
        outcome = str(exc)
    # Every refusal names the source (and line); nothing else escapes.
    assert isinstance(outcome, routing.Routing) or str(outcome).startswith("<string>")


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "control", "notify", "--check", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_accepts_good_routing_and_refuses_a_bad_file_or_secret(tmp_path: Path) -> None:
    secret = tmp_path / "hook.secret"
    secret.write_text("s3cret\n")
    good = tmp_path / "good.yaml"
    good.write_text(GOOD.replace("/nonexistent", str(secret)))
    done = _check("--routing", str(good))
    assert done.returncode == 0, done.stderr
    assert "routing for tashkent: 1 routes, 1 policies, 2 people, channels console, hook: ok" in (
        done.stdout
    )
    missing = tmp_path / "missing.yaml"
    missing.write_text(GOOD.replace("/nonexistent", str(tmp_path / "nope.secret")))
    done = _check("--routing", str(missing))
    assert done.returncode != 0
    assert f"channel 'hook' secret_file: cannot read {tmp_path / 'nope.secret'}" in done.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("contacts: {console: bob}", "contacts: {pager: bob}"))
    done = _check("--routing", str(bad))
    assert done.returncode != 0 and f"{bad}:8: unknown channel 'pager'" in done.stderr
