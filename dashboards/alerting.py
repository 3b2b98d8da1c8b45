"""Grafana alerting: the rules (WHO limits, devices offline, ingest lag, broker drops),
the contact point that carries them to the platform's own incident list, and the policy."""

# Queries are assembled from module constants and catalogue identifiers: S608 does not apply.
# ruff: noqa: S608

from __future__ import annotations

from typing import Any

from dashboards.panels import (
    DATASOURCE_UID,
    EXPR_UID,
    INGEST_LAG_ALERT_S,
    OFFLINE_ALERT_MINUTES,
    WHO_LIMITS,
)
from safecity.schema import DEVICE_STATUS, INGEST_STATS


def _rule(
    uid: str,
    title: str,
    query: str,
    window_s: int,
    op: str,
    value: float,
    *,
    for_: str,
    summary: str,
    severity: str,
    no_data: str = "OK",
) -> dict[str, Any]:
    """A Grafana-managed rule: InfluxQL A -> reduce(last) B -> threshold C."""
    expr = {"type": EXPR_UID, "uid": EXPR_UID}
    return {
        "uid": uid,
        "title": title,
        "condition": "C",
        "data": [
            {
                "refId": "A",
                "relativeTimeRange": {"from": window_s, "to": 0},
                "datasourceUid": DATASOURCE_UID,
                "model": {
                    "refId": "A",
                    "query": query,
                    "rawQuery": True,
                    "resultFormat": "time_series",
                    "intervalMs": 60_000,
                    "maxDataPoints": 43_200,
                },
            },
            {
                "refId": "B",
                "relativeTimeRange": {"from": 0, "to": 0},
                "datasourceUid": EXPR_UID,
                "model": {
                    "refId": "B",
                    "type": "reduce",
                    "expression": "A",
                    "reducer": "last",
                    "settings": {"mode": "dropNN"},
                    "datasource": expr,
                },
            },
            {
                "refId": "C",
                "relativeTimeRange": {"from": 0, "to": 0},
                "datasourceUid": EXPR_UID,
                "model": {
                    "refId": "C",
                    "type": "threshold",
                    "expression": "B",
                    "conditions": [{"evaluator": {"type": op, "params": [value]}}],
                    "datasource": expr,
                },
            },
        ],
        "noDataState": no_data,
        "execErrState": "Error",
        "for": for_,
        # Labels are env-interpolated by Grafana's file provisioning: no `$` in them.
        "labels": {"service": "safecity", "severity": severity},
        # Annotations are not interpolated, so alert templates ({{ $labels }}) are safe here.
        "annotations": {"summary": summary},
        "isPaused": False,
    }


def _window_seconds(window: str) -> int:
    return int(window[:-1]) * {"h": 3600, "m": 60}[window[-1]]


def alert_rules() -> list[dict[str, Any]]:
    """The provisioned alert rules: WHO limits, device offline, ingest lag, broker drops."""
    rules = []
    for field, limit, window in WHO_LIMITS:
        unit = "mg/m3" if field == "co" else "ug/m3"
        rules.append(
            _rule(
                f"safecity-who-{field}",
                f"WHO {field.upper()} {window} mean above {limit:g} {unit}",
                f'SELECT mean("{field}") FROM "air_quality" WHERE $timeFilter '
                'GROUP BY "city", "district"',
                _window_seconds(window),
                "gt",
                limit,
                for_="15m",
                severity="warning",
                summary=f"{field.upper()} {window} mean in {{{{ $labels.city }}}}/"
                f"{{{{ $labels.district }}}} is {{{{ $values.B }}}} {unit}, above the WHO "
                f"2021 guideline of {limit:g}.",
            )
        )
    rules.append(
        _rule(
            "safecity-device-offline",
            "Devices offline",
            'SELECT count("online") FROM (SELECT last("online") AS "online" FROM '
            f'"{DEVICE_STATUS}" WHERE $timeFilter GROUP BY "city", "device_id") '
            'WHERE "online" = false GROUP BY "city"',
            86_400,
            "gt",
            0,
            for_=f"{OFFLINE_ALERT_MINUTES}m",
            severity="warning",
            summary="{{ $values.B }} device(s) in {{ $labels.city }} last reported offline.",
        )
    )
    rules.append(
        _rule(
            "safecity-ingest-lag",
            f"Ingest lag above {INGEST_LAG_ALERT_S} s",
            f'SELECT max("lag_seconds") FROM "{INGEST_STATS}" WHERE $timeFilter '
            'GROUP BY "city", "worker_id"',
            300,
            "gt",
            INGEST_LAG_ALERT_S,
            for_="5m",
            severity="critical",
            # A worker that stops writing its stats is itself a problem worth a look.
            no_data="NoData",
            summary="Ingest worker {{ $labels.worker_id }} lags {{ $values.B }} s behind "
            "the devices.",
        )
    )
    rules.append(
        _rule(
            "safecity-broker-drops",
            "Broker dropped messages",
            f'SELECT sum("broker_dropped") FROM "{INGEST_STATS}" WHERE $timeFilter GROUP BY "city"',
            300,
            "gt",
            0,
            for_="0s",
            severity="critical",
            summary="Mosquitto dropped {{ $values.B }} message(s) in 5 min (queue limits): "
            "data was lost before ingest.",
        )
    )
    return rules


# Where Grafana's alerts go: the platform's own API, which opens (and on `resolved`,
# resolves) an incident per alert, so that Grafana's rules and the alerts service's rules
# meet in one incident list (the console's feed, GET /v1/incidents). Grafana expands the
# two variables from its environment when it loads the file.
CONTACT_POINT = "safecity-incidents"
CONTACT_POINT_UID = "safecity-incidents-webhook"
WEBHOOK_PATH = "/v1/alerts/grafana"


def contact_point() -> dict[str, Any]:
    """The webhook receiver (contact point API shape) into the API's alert intake."""
    return {
        "uid": CONTACT_POINT_UID,
        "name": CONTACT_POINT,
        "type": "webhook",
        "disableResolveMessage": False,
        "settings": {
            "url": "${SAFECITY_GRAFANA_WEBHOOK_URL}",
            "httpMethod": "POST",
            # An `operate` API key; the intake takes it as a bearer token.
            "authorization_scheme": "Bearer",
            # A mounted secret file (compose `secrets:`, a Kubernetes Secret).
            "authorization_credentials": "$__file{/run/secrets/grafana_webhook_key}",
            "maxAlerts": 100,
        },
    }


def notification_policy() -> dict[str, Any]:
    """The root policy: every safecity alert to the incident intake, one group per place."""
    return {
        "receiver": CONTACT_POINT,
        "group_by": ["grafana_folder", "alertname", "city", "district", "worker_id"],
        "group_wait": "30s",
        "group_interval": "5m",
        "repeat_interval": "4h",
    }
