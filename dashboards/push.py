"""Push the generated provisioning to an existing Grafana over its HTTP API (grafana-client).

Idempotent: every object has a fixed UID; each is read first and written only when it
is missing (create) or differs from ours (update in place), so a second push with the
same inputs changes nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import grafana_client
from grafana_client.client import GrafanaClientError, GrafanaException

from dashboards import build
from safecity.errors import PushError
from safecity.registry import City
from safecity.settings import InfluxSettings

log = logging.getLogger("dashboards.push")

# Fields Grafana adds to what it returns; they are not ours to compare.
_SERVER_DASHBOARD_KEYS = ("id", "version")
_RULE_KEYS = (
    "title",
    "condition",
    "data",
    "noDataState",
    "execErrState",
    "for",
    "labels",
    "annotations",
    "isPaused",
    "folderUID",
    "ruleGroup",
)
_DATASOURCE_KEYS = ("name", "type", "access", "url", "user", "isDefault", "jsonData")


@dataclass
class PushReport:
    """What a push did, object by object: `kind:uid` in created, updated or unchanged."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True when anything was created or updated."""
        return bool(self.created or self.updated)

    def summary(self) -> str:
        """One line per outcome, for the CLI."""
        parts = []
        for label, items in (
            ("created", self.created),
            ("updated", self.updated),
            ("unchanged", self.unchanged),
        ):
            parts.append(f"{label} {len(items)}" + (f": {', '.join(items)}" if items else ""))
        return "\n".join(parts)


def datasource_body(influx: InfluxSettings, url: str | None = None) -> dict[str, Any]:
    """The datasource as the API takes it; `url` is InfluxDB as Grafana's server sees it."""
    body: dict[str, Any] = {
        "name": build.DATASOURCE_NAME,
        "uid": build.DATASOURCE_UID,
        "type": "influxdb",
        "access": "proxy",
        "url": url or influx.url,
        "user": influx.username or "",
        "isDefault": True,
        "jsonData": {"dbName": influx.database, "httpMode": "POST", "timeInterval": "10s"},
    }
    if influx.token is not None:
        # InfluxDB 2.x/3.x v1 API: token auth in a custom header, kept in secureJsonData.
        body["jsonData"]["httpHeaderName1"] = "Authorization"
        body["secureJsonData"] = {"httpHeaderValue1": f"Token {influx.token.get_secret_value()}"}
    elif influx.password is not None:
        body["secureJsonData"] = {"password": influx.password.get_secret_value()}
    return body


def datasource_bodies(
    influx: InfluxSettings, cities: Sequence[City], url: str | None = None
) -> list[dict[str, Any]]:
    """One datasource, or one per city on the city's own database (several cities)."""
    if len(cities) <= 1:
        return [datasource_body(influx, url)]
    ids = [c.id for c in cities]
    bodies = []
    for i, city in enumerate(cities):
        database = influx.database_for(city.id, ids)
        body = datasource_body(influx.model_copy(update={"database": database}), url)
        body["name"] = f"{build.DATASOURCE_NAME_PREFIX}{city.id}"
        body["uid"] = build.city_datasource(city)["uid"]
        body["isDefault"] = i == 0
        bodies.append(body)
    return bodies


def _subset(obj: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: obj.get(k) for k in keys}


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


class Pusher:
    """Pushes folder, datasource, dashboards and alert rules through grafana-client."""

    def __init__(self, url: str, token: str, *, timeout: float = 10.0) -> None:
        # grafana-client is untyped; keep it behind this class.
        api_cls = cast(Any, grafana_client).GrafanaApi
        self.api: Any = api_cls.from_url(url=url, credential=token, timeout=timeout)
        self.report = PushReport()

    def _get(self, what: str, call: Any, *args: Any) -> Any | None:
        """Call a grafana-client getter; None on 404."""
        try:
            return call(*args)
        except GrafanaClientError as exc:
            if exc.status_code == 404:
                return None
            raise PushError(f"{what}: Grafana {exc.status_code}: {exc.message}") from exc
        except GrafanaException as exc:
            raise PushError(f"{what}: {exc.message}") from exc

    def _do(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except GrafanaException as exc:
            raise PushError(f"{what}: Grafana {exc.status_code}: {exc.message}") from exc

    def health(self) -> dict[str, Any]:
        """GET /api/health: Grafana answers and its database is ok."""
        # grafana-client's health.check reads /api/frontend/settings; /api/health is the probe.
        health: dict[str, Any] = self._do("health", self.api.client.GET, "/health")
        if health.get("database") != "ok":
            raise PushError(f"Grafana is not healthy: {health}")
        return health

    def folder(self) -> None:
        """The `safecity` folder, by fixed UID."""
        what = f"folder:{build.FOLDER_UID}"
        existing = self._get(what, self.api.folder.get_folder, build.FOLDER_UID)
        if existing is None:
            self._do(what, self.api.folder.create_folder, build.FOLDER_TITLE, uid=build.FOLDER_UID)
            self.report.created.append(what)
        elif existing.get("title") != build.FOLDER_TITLE:
            self._do(
                what,
                self.api.folder.update_folder,
                build.FOLDER_UID,
                title=build.FOLDER_TITLE,
                overwrite=True,
            )
            self.report.updated.append(what)
        else:
            self.report.unchanged.append(what)

    def datasource(self, body: dict[str, Any]) -> None:
        """The InfluxDB datasource, by fixed UID."""
        uid = body["uid"]
        what = f"datasource:{uid}"
        existing = self._get(what, self.api.datasource.get_datasource_by_uid, uid)
        if existing is None:
            self._do(what, self.api.datasource.create_datasource, body)
            self.report.created.append(what)
        elif "secureJsonData" in body or _canonical(
            _subset(existing, _DATASOURCE_KEYS)
        ) != _canonical(_subset(body, _DATASOURCE_KEYS)):
            # Secrets are write-only in Grafana: with one given we cannot compare, so we set it.
            self._do(what, self.api.datasource.update_datasource_by_uid, uid, body)
            self.report.updated.append(what)
        else:
            self.report.unchanged.append(what)

    def dashboard(self, model: dict[str, Any]) -> None:
        """One dashboard, by fixed UID, in the safecity folder."""
        uid = model["uid"]
        what = f"dashboard:{uid}"
        existing = self._get(what, self.api.dashboard.get_dashboard, uid)
        ours = {k: v for k, v in model.items() if k not in _SERVER_DASHBOARD_KEYS}
        if existing is not None:
            theirs = {
                k: v for k, v in existing["dashboard"].items() if k not in _SERVER_DASHBOARD_KEYS
            }
            in_folder = existing.get("meta", {}).get("folderUid") == build.FOLDER_UID
            if in_folder and _canonical(theirs) == _canonical(ours):
                self.report.unchanged.append(what)
                return
        payload = {
            "dashboard": {**ours, "id": None},
            "folderUid": build.FOLDER_UID,
            "overwrite": True,
            "message": "safecity dashboards push",
        }
        self._do(what, self.api.dashboard.update_dashboard, payload)
        (self.report.created if existing is None else self.report.updated).append(what)

    def alert_rule(self, rule: dict[str, Any]) -> None:
        """One alert rule, by fixed UID, in the safecity folder and rule group."""
        uid = rule["uid"]
        what = f"alert-rule:{uid}"
        body = {**rule, "folderUID": build.FOLDER_UID, "ruleGroup": build.RULE_GROUP, "orgID": 1}
        existing = self._get(what, self.api.alertingprovisioning.get_alertrule, uid)
        if existing is None:
            self._do(what, self.api.alertingprovisioning.create_alertrule, body)
            self.report.created.append(what)
        elif _canonical(_subset(existing, _RULE_KEYS)) != _canonical(_subset(body, _RULE_KEYS)):
            self._do(what, self.api.alertingprovisioning.update_alertrule, uid, body)
            self.report.updated.append(what)
        else:
            self.report.unchanged.append(what)


def push(
    url: str,
    token: str,
    influx: InfluxSettings,
    *,
    datasource_url: str | None = None,
    city: City | Sequence[City] | None = None,
    timeout: float = 10.0,
) -> PushReport:
    """Push folder, datasource(s), dashboards and alert rules; return what changed.

    Several cities: a datasource per city database (`InfluxSettings.database_for`), as
    `safecity dashboards build` provisions them.
    """
    cities = build.as_cities(city)
    pusher = Pusher(url, token, timeout=timeout)
    pusher.health()
    pusher.folder()
    for body in datasource_bodies(influx, cities, datasource_url):
        pusher.datasource(body)
    for model in build.dashboards(cities):
        pusher.dashboard(model)
    for rule in build.city_alert_rules(cities):
        pusher.alert_rule(rule)
    log.info(
        "grafana push done",
        extra={
            # `created` is a LogRecord attribute: prefix the counts.
            "n_created": len(pusher.report.created),
            "n_updated": len(pusher.report.updated),
            "n_unchanged": len(pusher.report.unchanged),
        },
    )
    return pusher.report
