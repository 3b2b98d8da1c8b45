"""Prometheus metrics of the notification service."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECEIVED = Counter(
    "safecity_notify_received_total",
    "Incident lifecycle steps received, by state",
    ["city", "state"],
)
SKIPPED = Counter(
    "safecity_notify_skipped_total", "Messages not acted on (not an incident step)", ["reason"]
)
PLANNED = Counter(
    "safecity_notify_planned_total", "Pages planned into the outbox (new keys only)", ["city"]
)
UNROUTED = Counter(
    "safecity_notify_unrouted_total", "Incidents no route matched (nobody paged)", ["city"]
)
ATTEMPTS = Counter(
    "safecity_notify_attempts_total",
    "Delivery attempts by channel and result",
    ["channel", "result"],
)
PAGES = Counter(
    "safecity_notify_pages_total", "Pages settled by channel and result", ["channel", "result"]
)
FAILURES = Counter(
    "safecity_notify_failures_total",
    "Failed attempts (retried or given up) by channel",
    ["channel"],
)
CANCELLED = Counter(
    "safecity_notify_cancelled_total", "Pending pages cancelled (acknowledged or resolved)"
)
SEND_SECONDS = Histogram(
    "safecity_notify_send_seconds", "Time one send took, by channel", ["channel"]
)
FIRST_DELIVERY = Histogram(
    "safecity_notify_first_delivery_seconds",
    "Incident noticed -> its first page delivered, by channel",
    ["channel"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800),
)
TIME_TO_ACK = Histogram(
    "safecity_notify_time_to_ack_seconds",
    "Incident noticed -> acknowledged (while pages were pending)",
    buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200),
)
OUTBOX = Gauge("safecity_notify_outbox", "Outbox messages by status", ["status"])
IN_FLIGHT = Gauge("safecity_notify_in_flight", "Deliveries being sent now")
CONNECTED = Gauge("safecity_notify_mqtt_connected", "1 while connected to the broker")
