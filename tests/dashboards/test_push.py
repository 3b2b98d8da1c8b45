"""`safecity dashboards push` against a local server speaking the Grafana HTTP API we use.

Request and response shapes follow Grafana's HTTP API docs: /api/health, /api/folders,
/api/datasources (+ /uid/{uid}), /api/dashboards/db and /uid/{uid},
/api/v1/provisioning/alert-rules (+ /{uid}); Bearer token auth; 404 with a message
for unknown UIDs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from standin import Request, StandIn

from control import cli
from dashboards import build
from dashboards.push import push
from safecity import citygen
from safecity.errors import PushError
from safecity.settings import InfluxSettings

TOKEN = "glsa_test_token"


Reply = tuple[int, Any]


class FakeGrafana:
    """In-memory Grafana: folders, datasources, dashboards, alert rules, a request log;
    served by a stand-in server (`url`) until `close()`."""

    def __init__(self) -> None:
        self.folders: dict[str, dict[str, Any]] = {}
        self.datasources: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.rules: dict[str, dict[str, Any]] = {}
        self.log: list[tuple[str, str, str | None]] = []
        self.next_id = 1
        self.server = StandIn(self.answer)

    @property
    def url(self) -> str:
        """Base URL."""
        return self.server.url

    def close(self) -> None:
        """Stop serving."""
        self.server.close()

    def writes(self) -> list[tuple[str, str]]:
        """Every non-GET request, in order."""
        return [(m, p) for m, p, _ in self.log if m != "GET"]

    def new_id(self) -> int:
        """Grafana's numeric ids."""
        self.next_id += 1
        return self.next_id

    def answer(self, request: Request) -> Reply:
        """The routes of the Grafana HTTP API that `dashboards.push` uses."""
        auth = request.headers.get("Authorization")
        self.log.append((request.method, request.target, auth))
        if auth != f"Bearer {TOKEN}":
            return 401, {"message": "Unauthorized"}
        parts = request.path.strip("/").split("/")
        if request.method == "GET":
            reply = self._get(parts)
        elif request.method == "POST":
            reply = self._post(parts, request.json())
        else:
            reply = self._put(parts, request.json())
        return reply or (404, {"message": "Not found"})

    def _get(self, parts: list[str]) -> Reply | None:
        """The GET routes; None for one this server does not have."""
        if parts == ["api", "health"]:
            return 200, {"commit": "abc123", "database": "ok", "version": "11.3.0"}
        if parts[:2] == ["api", "folders"] and len(parts) == 3:
            folder = self.folders.get(parts[2])
            return _found(folder, {"message": "folder not found", "status": "not-found"})
        if parts[:3] == ["api", "datasources", "uid"]:
            return _found(self.datasources.get(parts[3]), {"message": "Data source not found"})
        if parts[:3] == ["api", "dashboards", "uid"]:
            return _found(self.dashboards.get(parts[3]), {"message": "Dashboard not found"})
        if parts[:3] == ["api", "v1", "provisioning"] and len(parts) == 5:
            return _found(self.rules.get(parts[4]), {"message": "rule not found"})
        return None

    def _post(self, parts: list[str], body: Any) -> Reply | None:
        """The POST routes; None for one this server does not have."""
        if parts == ["api", "folders"]:
            if body["uid"] in self.folders:
                return 409, {"message": "a folder with the same uid already exists"}
            folder = {
                "id": self.new_id(),
                "uid": body["uid"],
                "title": body["title"],
                "url": f"/dashboards/f/{body['uid']}/",
                "version": 1,
            }
            self.folders[body["uid"]] = folder
            return 200, folder
        if parts == ["api", "datasources"]:
            if any(d["name"] == body["name"] for d in self.datasources.values()):
                return 409, {"message": "data source with the same name already exists"}
            ds = self._store_datasource(body, self.new_id(), 1)
            return _datasource(ds, "Datasource added")
        if parts == ["api", "dashboards", "db"]:
            return self._save_dashboard(body)
        if parts == ["api", "v1", "provisioning", "alert-rules"]:
            return self._save_rule(body, 201, None)
        return None

    def _put(self, parts: list[str], body: Any) -> Reply | None:
        """The PUT routes; None for one this server does not have."""
        if parts[:2] == ["api", "folders"]:
            folder = self.folders[parts[2]]
            folder.update(title=body["title"], version=folder["version"] + 1)
            return 200, folder
        if parts[:3] == ["api", "datasources", "uid"]:
            old = self.datasources[parts[3]]
            ds = self._store_datasource(body, old["id"], old["version"] + 1)
            return _datasource(ds, "Datasource updated")
        if parts[:4] == ["api", "v1", "provisioning", "alert-rules"]:
            if parts[4] not in self.rules:
                return 404, {"message": "rule not found"}
            return self._save_rule(body, 200, self.rules[parts[4]]["id"])
        return None

    def _store_datasource(self, body: dict[str, Any], ds_id: int, version: int) -> dict[str, Any]:
        # Secrets are write-only: Grafana answers with secureJsonFields flags instead.
        secure = {k: True for k in body.get("secureJsonData", {})}
        ds = {k: v for k, v in body.items() if k != "secureJsonData"}
        ds.update(id=ds_id, orgId=1, version=version, readOnly=False, secureJsonFields=secure)
        self.datasources[body["uid"]] = ds
        return ds

    def _save_dashboard(self, body: dict[str, Any]) -> Reply:
        model = body["dashboard"]
        if not model.get("title"):
            return 400, {"message": "Dashboard title cannot be empty"}
        if body.get("folderUid") not in self.folders:
            return 400, {"message": "folder not found"}
        old = self.dashboards.get(model["uid"])
        if old is not None and not body.get("overwrite"):
            return 412, {"message": "The dashboard has been changed by someone else"}
        version = 1 if old is None else old["dashboard"]["version"] + 1
        dash_id = self.new_id() if old is None else old["dashboard"]["id"]
        stored = {**model, "id": dash_id, "version": version}
        meta = {"folderUid": body["folderUid"], "slug": model["uid"], "version": version}
        self.dashboards[model["uid"]] = {"dashboard": stored, "meta": meta}
        return 200, {
            "id": dash_id,
            "uid": model["uid"],
            "url": f"/d/{model['uid']}/{model['uid']}",
            "status": "success",
            "version": version,
            "slug": model["uid"],
        }

    def _save_rule(self, body: dict[str, Any], status: int, rule_id: int | None) -> Reply:
        if body.get("folderUID") not in self.folders:
            return 400, {"message": "invalid alert rule: folder does not exist"}
        for query in body["data"]:
            if query["datasourceUid"] not in (*self.datasources, "__expr__"):
                return 400, {"message": "invalid alert rule: data source not found"}
        rule = {
            **body,
            "id": rule_id or self.new_id(),
            "updated": "2026-01-15T06:00:00Z",
            "provenance": "api",
        }
        self.rules[body["uid"]] = rule
        return status, rule


def _found(item: dict[str, Any] | None, missing: dict[str, str]) -> Reply:
    """200 with `item`, or 404 with `missing` when there is none."""
    return (404, missing) if item is None else (200, item)


def _datasource(ds: dict[str, Any], message: str) -> Reply:
    return 200, {"datasource": ds, "id": ds["id"], "message": message, "name": ds["name"]}


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    """A fake Grafana on a free loopback port."""
    server = FakeGrafana()
    yield server
    server.close()


INFLUX = InfluxSettings(url="http://influxdb:8086", database="safecity")


def test_push_creates_everything_once_then_changes_nothing(grafana: FakeGrafana) -> None:
    first = push(grafana.url, TOKEN, INFLUX)
    assert first.updated == [] and first.unchanged == []
    assert len(first.created) == 1 + 1 + 9 + 9
    assert list(grafana.folders) == [build.FOLDER_UID]
    ds = grafana.datasources[build.DATASOURCE_UID]
    assert (ds["type"], ds["url"], ds["jsonData"]["dbName"]) == (
        "influxdb",
        "http://influxdb:8086",
        "safecity",
    )
    assert len(grafana.dashboards) == 9
    assert all(d["meta"]["folderUid"] == build.FOLDER_UID for d in grafana.dashboards.values())
    assert len(grafana.rules) == 9
    assert all(r["folderUID"] == build.FOLDER_UID for r in grafana.rules.values())
    assert {r["ruleGroup"] for r in grafana.rules.values()} == {build.RULE_GROUP}
    # Every request carried the service-account token.
    assert {auth for _, _, auth in grafana.log} == {f"Bearer {TOKEN}"}
    writes_after_first = len(grafana.writes())

    second = push(grafana.url, TOKEN, INFLUX)
    assert not second.changed
    assert len(second.unchanged) == len(first.created)
    assert len(grafana.writes()) == writes_after_first  # only reads the second time
    assert all(d["dashboard"]["version"] == 1 for d in grafana.dashboards.values())


def test_push_updates_drifted_objects_in_place(grafana: FakeGrafana) -> None:
    push(grafana.url, TOKEN, INFLUX)
    ids = {uid: d["dashboard"]["id"] for uid, d in grafana.dashboards.items()}
    # Someone edited things by hand in Grafana.
    grafana.dashboards["safecity-traffic"]["dashboard"]["title"] = "hand edited"
    grafana.rules["safecity-who-pm25"]["data"][2]["model"]["conditions"][0]["evaluator"][
        "params"
    ] = [99]
    grafana.folders[build.FOLDER_UID]["title"] = "renamed"
    grafana.datasources[build.DATASOURCE_UID]["url"] = "http://elsewhere:8086"

    report = push(grafana.url, TOKEN, INFLUX)
    assert sorted(report.updated) == [
        "alert-rule:safecity-who-pm25",
        "dashboard:safecity-traffic",
        f"datasource:{build.DATASOURCE_UID}",
        f"folder:{build.FOLDER_UID}",
    ]
    assert report.created == []
    traffic = grafana.dashboards["safecity-traffic"]["dashboard"]
    assert traffic["title"] == "safecity / Traffic and transport corridors"
    assert traffic["version"] == 2
    assert {uid: d["dashboard"]["id"] for uid, d in grafana.dashboards.items()} == ids
    rule = grafana.rules["safecity-who-pm25"]
    assert rule["data"][2]["model"]["conditions"][0]["evaluator"]["params"] == [15]
    assert grafana.folders[build.FOLDER_UID]["title"] == build.FOLDER_TITLE
    assert grafana.datasources[build.DATASOURCE_UID]["url"] == "http://influxdb:8086"
    assert len(grafana.dashboards) == 9 and len(grafana.rules) == 9


def test_datasource_secret_is_sent_and_reapplied(grafana: FakeGrafana) -> None:
    influx = InfluxSettings(url="http://influxdb:8086", username="grafana", password="s3cret")
    push(grafana.url, TOKEN, influx)
    ds = grafana.datasources[build.DATASOURCE_UID]
    assert ds["user"] == "grafana" and ds["secureJsonFields"] == {"password": True}
    # A write-only secret cannot be compared: it is set again, in place (same id).
    again = push(grafana.url, TOKEN, influx)
    assert again.updated == [f"datasource:{build.DATASOURCE_UID}"]
    assert grafana.datasources[build.DATASOURCE_UID]["id"] == ds["id"]


def test_wrong_token_is_a_clear_error(grafana: FakeGrafana) -> None:
    with pytest.raises(PushError, match="401"):
        push(grafana.url, "wrong", INFLUX)
    assert grafana.writes() == []


def test_cli_push(
    grafana: FakeGrafana, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAFECITY_INFLUX__URL", "http://influxdb:8086")
    monkeypatch.setenv("SAFECITY_GRAFANA_TOKEN", TOKEN)
    assert cli.main(["dashboards", "push", "--url", grafana.url]) == 0
    assert "created 20" in capsys.readouterr().out
    assert cli.main(["dashboards", "push", "--url", grafana.url, "--token", TOKEN]) == 0
    out = capsys.readouterr().out
    assert "created 0" in out and "updated 0" in out and "unchanged 20" in out


def test_push_of_several_cities_makes_a_datasource_per_city_database(
    grafana: FakeGrafana,
) -> None:
    cities = citygen.builtin_cities(["tashkent", "samarkand"])
    report = push(grafana.url, TOKEN, INFLUX, city=list(cities.values()))
    assert len(report.created) == 1 + 2 + 9 + 2 * 9
    assert {uid: ds["jsonData"]["dbName"] for uid, ds in grafana.datasources.items()} == {
        "safecity-influxdb-tashkent": "safecity_tashkent",
        "safecity-influxdb-samarkand": "safecity_samarkand",
    }
    assert grafana.datasources["safecity-influxdb-samarkand"]["name"] == "safecity samarkand"
    traffic = grafana.dashboards["safecity-traffic"]["dashboard"]
    assert [v["name"] for v in traffic["templating"]["list"]][:2] == ["city", "source"]
    assert "safecity-who-pm25-samarkand" in grafana.rules
    assert not push(grafana.url, TOKEN, INFLUX, city=list(cities.values())).changed
