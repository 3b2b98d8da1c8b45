"""Prometheus metrics of the alerts service."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

RECEIVED = Counter(
    "safecity_alerts_received_total", "Messages received from the broker", ["channel"]
)
SKIPPED = Counter(
    "safecity_alerts_skipped_total",
    "Messages not evaluated (invalid; ingest dead-letters them)",
    ["reason"],
)
SIGNALS = Counter("safecity_alerts_signals_total", "Rule conditions that became true", ["rule"])
FIRED = Counter(
    "safecity_alerts_fired_total", "Alerts fired (incidents opened)", ["rule", "severity"]
)
DEDUPLICATED = Counter(
    "safecity_alerts_deduplicated_total", "Signals absorbed by an open incident", ["rule"]
)
AUTO_RESOLVED = Counter(
    "safecity_alerts_auto_resolved_total", "Incidents resolved by a cleared condition", ["rule"]
)
ACKED = Counter("safecity_alerts_acked_total", "Messages acknowledged to the broker")
WRITE_ERRORS = Counter("safecity_alerts_write_errors_total", "Failed InfluxDB writes", ["error"])
CONNECTED = Gauge("safecity_alerts_mqtt_connected", "1 while connected to the broker")
WATERMARK = Gauge("safecity_alerts_event_time_seconds", "Newest device ts evaluated (epoch s)")
INCIDENTS = Gauge("safecity_alerts_incidents", "Incidents in the store by state", ["state"])
TTA = Gauge(
    "safecity_alerts_time_to_acknowledge_seconds",
    "Time to acknowledge by type and district",
    ["rule", "district", "stat"],
)
TTR = Gauge(
    "safecity_alerts_time_to_resolve_seconds",
    "Time to resolve by type and district",
    ["rule", "district", "stat"],
)
POISON = Counter(
    "safecity_alerts_poison_total",
    "Messages quarantined (a stage raised on every retry), by stage",
    ["stage"],
)
