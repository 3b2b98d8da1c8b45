"""The incident book: deduplicates signals into incidents (one per rule, place and episode).

An unresolved incident absorbs a new signal of its rule and place when the rule
resolves itself once its condition clears (threshold, stuck, absence: the episode
lasts until then), or when the signal falls within the rule's `episode` from the
incident's opening (events, rates, composites). The book is rebuilt from the stored
transition log at start, so a restart neither re-fires nor forgets.
"""

from __future__ import annotations

from collections.abc import Iterable

from alerts.engine import Clear, Signal
from safecity import incidents as inc
from safecity.readings import epoch_ms, from_epoch_ms


class Book:
    """Unresolved incidents by (rule id, place)."""

    def __init__(self, city: str) -> None:
        self.city = city
        self.active: dict[tuple[str, str], inc.Incident] = {}

    def load(self, stored: Iterable[inc.Incident]) -> None:
        """Replace the book with the unresolved incidents of the store (latest per place)."""
        self.active = {}
        for incident in sorted(stored, key=lambda i: i.opened_at):
            if not incident.resolved:
                self.active[(incident.rule_id, incident.place)] = incident

    def decide(self, signal: Signal) -> inc.Incident | None:
        """A new incident for the signal, or None when an unresolved one absorbs it."""
        rule = signal.rule
        current = self.active.get((rule.id, signal.place))
        if current is not None:
            if rule.auto_resolve:
                return None
            if signal.at_ms < epoch_ms(current.opened_at) + rule.episode * 1000:
                return None
        severity = rule.severity
        incident = inc.open_incident(
            city=self.city,
            district=signal.district,
            rule_id=rule.id,
            rule_type=rule.type,
            severity=severity,
            place=signal.place,
            devices=signal.devices,
            opened_at=from_epoch_ms(signal.at_ms),
            value=signal.value,
            message=rule.message,
            event=signal.event,
        )
        self.active[(rule.id, signal.place)] = incident
        return incident

    def clear(self, clear: Clear) -> inc.Incident | None:
        """The incident resolved by a cleared condition (auto-resolving rules), or None."""
        if not clear.rule.auto_resolve:
            return None
        current = self.active.pop((clear.rule.id, clear.place), None)
        if current is None:
            return None
        return inc.advance(
            current, inc.State.RESOLVED, "alerts", from_epoch_ms(clear.at_ms), "condition cleared"
        )

    def forget(self, incident: inc.Incident) -> None:
        """Drop a stored-resolved incident (e.g. resolved by an operator through the API)."""
        key = (incident.rule_id, incident.place)
        if key in self.active and self.active[key].id == incident.id:
            del self.active[key]
