"""Incidents: the model and its state machine, the append-only store, the figures.

The alerts service and the API both use this package; it imports no service package.
`from safecity import incidents as inc` gives the whole public surface (`inc.Incident`,
`inc.advance`, `inc.IncidentStore`, `inc.figures`, ...).
"""

from safecity.incidents.figures import Figure, figures
from safecity.incidents.lifecycle import IncidentChange, change_of, notice_group
from safecity.incidents.model import (
    ALLOWED,
    Identifier,
    Incident,
    State,
    Transition,
    advance,
    incident_id,
    open_incident,
)
from safecity.incidents.store import (
    ALERT_TAGS,
    ALERTS,
    TRANSITION_TAGS,
    TRANSITIONS,
    Alert,
    IncidentStore,
    alert_for,
    transition_point,
)
from safecity.incidents.tables import markdown_table

__all__ = [
    "ALERTS",
    "ALERT_TAGS",
    "ALLOWED",
    "TRANSITIONS",
    "TRANSITION_TAGS",
    "Alert",
    "Figure",
    "Identifier",
    "Incident",
    "IncidentChange",
    "IncidentStore",
    "State",
    "Transition",
    "advance",
    "alert_for",
    "change_of",
    "figures",
    "incident_id",
    "markdown_table",
    "notice_group",
    "open_incident",
    "transition_point",
]
