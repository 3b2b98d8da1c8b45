"""Rule files: the shipped defaults cover the catalogue; bad files fail with line numbers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from alerts import rules
from safecity import catalogue

GOOD_HEAD = "city: tashkent\nrules:\n"


def test_shipped_rules_cover_every_kind_and_event_source() -> None:
    ruleset = rules.load_for("tashkent")
    covered: set[str] = set()
    for rule in ruleset.rules:
        if isinstance(rule, rules.ThresholdRule | rules.RateRule | rules.StuckRule):
            covered.add(rule.kind)
        elif isinstance(rule, rules.AbsenceRule):
            covered |= set(rule.kinds)
        elif isinstance(rule, rules.EventRule):
            covered |= {k.name for k in catalogue.KINDS.values() if rule.event in k.emits_events}
    assert covered == set(catalogue.KINDS)
    types = {rule.type for rule in ruleset.rules}
    assert types == {"threshold", "rate", "stuck", "absence", "event", "composite"}
    assert ruleset.rule("panic").severity is catalogue.Severity.CRITICAL
    assert ruleset.rule("gunshot_crowd").severity is catalogue.Severity.CRITICAL


@pytest.mark.parametrize(
    ("body", "line", "fragment"),
    [
        (
            "  - id: a\n    type: threshold\n    kind: air_quality\n    field: pm25\n"
            "    above: lots\n    severity: low\n    message: m\n",
            7,
            "rules[0].above: Input should be a valid number",
        ),
        (
            "  - id: a\n    type: event\n    event: panic\n    severity: low\n    message: m\n"
            "  - id: b\n    type: event\n    event: panik\n    severity: low\n    message: m\n",
            8,
            "rules[1]: unknown event type 'panik'",
        ),
        (
            "  - id: a\n    type: absence\n    silent_for: 10 minutes\n"
            "    severity: low\n    message: m\n",
            5,
            "bad duration '10 minutes'",
        ),
        (
            "  - id: a\n    type: event\n    event: panic\n    severity: urgent\n    message: m\n",
            6,
            "rules[0].severity",
        ),
        (
            "  - id: a\n    type: event\n    event: panic\n    severity: low\n    message: m\n"
            "    colour: red\n",
            8,
            "rules[0].colour: Extra inputs are not permitted",
        ),
        (
            "  - id: a\n    type: treshold\n    severity: low\n    message: m\n",
            4,
            "rules[0].type: Input tag 'treshold'",
        ),
        ("  - id: a\n    type: [event\n", 5, "not valid YAML"),
    ],
)
def test_errors_name_the_line(body: str, line: int, fragment: str) -> None:
    with pytest.raises(rules.RulesError) as caught:
        rules.loads(GOOD_HEAD + body, "city.yaml")
    message = str(caught.value)
    assert f"city.yaml:{line}:" in message
    assert fragment in message


def test_cross_rule_errors() -> None:
    body = (
        "  - id: a\n    type: event\n    event: panic\n    severity: low\n    message: m\n"
        "  - id: c\n    type: composite\n    all_of: [a, nope]\n    radius_m: 100\n"
        "    within: 5m\n    severity: low\n    message: m\n"
    )
    with pytest.raises(rules.RulesError, match="refers to unknown rule 'nope'"):
        rules.loads(GOOD_HEAD + body, "x.yaml")
    twice = "  - id: a\n    type: event\n    event: panic\n    severity: low\n    message: m\n"
    with pytest.raises(rules.RulesError, match="duplicate rule id 'a'"):
        rules.loads(GOOD_HEAD + twice + twice, "x.yaml")
    field = (
        "  - id: a\n    type: threshold\n    kind: noise\n    field: pm25\n    above: 1\n"
        "    severity: low\n    message: m\n"
    )
    with pytest.raises(rules.RulesError, match=r"x.yaml:3: .*kind noise has no numeric field"):
        rules.loads(GOOD_HEAD + field, "x.yaml")


def test_cli_check_reports_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        GOOD_HEAD + "  - id: a\n    type: threshold\n    kind: air_quality\n    field: pm25\n"
        "    above: 15\n    for: forever\n    severity: low\n    message: m\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "control", "alerts", "--check", "--rules", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert f"{bad}:8: rules[0].for: Value error, bad duration" in result.stderr or (
        f"{bad}:8: rules[0].for: bad duration" in result.stderr
    )
    ok = subprocess.run(
        [sys.executable, "-m", "control", "alerts", "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "rules for tashkent: ok" in ok.stdout


def test_docs_document_the_incident_measurements() -> None:
    from safecity import incidents

    doc = (Path(__file__).resolve().parents[2] / "docs" / "schema.md").read_text()
    assert incidents.markdown_table() in doc


def test_shipped_rule_messages_quote_the_catalogues_who_guidelines() -> None:
    """A message that names a WHO guideline over the catalogue's averaging time quotes
    the catalogue's value, so the rule files cannot drift from the one table."""
    quoted = re.compile(r"WHO (\d+) h guideline (?:of )?(\d+(?:\.\d+)?)|WHO guideline of (\d+)")
    checked = 0
    for path in sorted((Path(rules.__file__).parent / "rules").glob("*.yaml")):
        for rule in rules.load(path).rules:
            if not isinstance(rule, rules.ThresholdRule) or rule.field not in catalogue.WHO_AIR:
                continue
            who = catalogue.WHO_AIR[rule.field]
            for hours, value, bare in quoted.findall(rule.message):
                if bare:
                    assert float(bare) == who.value, (path.name, rule.id)
                    checked += 1
                elif f"{hours}h" == who.period:
                    assert float(value) == who.value, (path.name, rule.id, rule.message)
                    checked += 1
    assert checked >= 6
