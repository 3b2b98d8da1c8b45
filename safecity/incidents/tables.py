"""The Markdown table of the measurements the incident store writes (docs/schema.md)."""

from __future__ import annotations

from safecity.incidents.store import ALERT_TAGS, ALERTS, TRANSITION_TAGS, TRANSITIONS


def markdown_table() -> str:
    """README rows for the two measurements this module writes (a test keeps them equal)."""
    return (
        "| Measurement | Tags | Fields |\n|---|---|---|\n"
        f"| `{ALERTS}` | {', '.join(ALERT_TAGS)} | `alert_id`, `incident_id`, `devices` "
        "(comma-separated), `message`, `rule_type`, `place`, `value`? (float), `event`? |\n"
        f"| `{TRANSITIONS}` | {', '.join(TRANSITION_TAGS)} | `incident_id`, `seq` (int, 0 = "
        "open), `from_state`, `by`, `note`, `by_subject`, `by_name` (a person who took the "
        "step), `place`, `devices`, `rule_type`, `message`, "
        "`opened_at_ms` (int), `elapsed_s` (float, s from opening to this step), `value`? (float), "
        "`event`? |\n"
    )
