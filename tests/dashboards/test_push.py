"""`safecity dashboards push` against a local server speaking the Grafana HTTP API we use.

Request and response shapes follow Grafana's HTTP API docs: /api/health, /api/folders,
/api/datasources (+ /uid/{uid}), /api/dashboards/db and /uid/{uid},
/api/v1/provisioning/alert-rules (+ /{uid}); Bearer token auth; 404 with a message
for unknown UIDs.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from control import cli
from dashboards import build
from dashboards.push import push
from safecity import citygen
from safecity.errors import PushError
from safecity.settings import InfluxSettings

TOKEN = "glsa_test_token"


class FakeGrafana(ThreadingHTTPServer):
    """In-memory Grafana: folders, datasources, dashboards, alert rules, a request log."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.folders: dict[str, dict[str, Any]] = {}
        self.datasources: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.rules: dict[str, dict[str, Any]] = {}
        self.log: list[tuple[str, str, str | None]] = []
        self.next_id = 1

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    def writes(self) -> list[tuple[str, str]]:
        """Every non-GET request, in order."""
        return [(m, p) for m, p, _ in self.log if m != "GET"]

    def new_id(self) -> int:
        """Grafana's numeric ids."""
        self.next_id += 1
        return self.next_id


class Handler(BaseHTTPRequestHandler):
    """Routes of the Grafana HTTP API that `dashboards.push` uses."""

    server: FakeGrafana

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length", "0"))
        return json.loads(self.rfile.read(length) or b"null")

    def _handle(self, method: str) -> None:
        auth = self.headers.get("Authorization")
        self.server.log.append((method, self.path, auth))
        if auth != f"Bearer {TOKEN}":
            self._send(401, {"message": "Unauthorized"})
            return
        parts = self.path.split("?")[0].strip("/").split("/")
        if method == "GET":
            handled = self._get(parts)
        elif method == "POST":
            handled = self._post(parts, self._body())
        else:
            handled = self._put(parts, self._body())
        if not handled:
            self._send(404, {"message": "Not found"})

    def _found(self, item: dict[str, Any] | None, missing: dict[str, str]) -> bool:
        """200 with `item`, or 404 with `missing` when there is none."""
        if item is None:
            self._send(404, missing)
        else:
            self._send(200, item)
        return True

    def _get(self, parts: list[str]) -> bool:
        """The GET routes; False for one this server does not have."""
        srv = self.server
        if parts == ["api", "health"]:
            self._send(200, {"commit": "abc123", "database": "ok", "version": "11.3.0"})
            return True
        if parts[:2] == ["api", "folders"] and len(parts) == 3:
            folder = srv.folders.get(parts[2])
            return self._found(folder, {"message": "folder not found", "status": "not-found"})
        if parts[:3] == ["api", "datasources", "uid"]:
            return self._found(srv.datasources.get(parts[3]), {"message": "Data source not found"})
        if parts[:3] == ["api", "dashboards", "uid"]:
            return self._found(srv.dashboards.get(parts[3]), {"message": "Dashboard not found"})
        if parts[:3] == ["api", "v1", "provisioning"] and len(parts) == 5:
            return self._found(srv.rules.get(parts[4]), {"message": "rule not found"})
        return False

    def _post(self, parts: list[str], body: Any) -> bool:
        """The POST routes; False for one this server does not have."""
        srv = self.server
        if parts == ["api", "folders"]:
            if body["uid"] in srv.folders:
                self._send(409, {"message": "a folder with the same uid already exists"})
                return True
            folder = {
                "id": srv.new_id(),
                "uid": body["uid"],
                "title": body["title"],
                "url": f"/dashboards/f/{body['uid']}/",
                "version": 1,
            }
            srv.folders[body["uid"]] = folder
            self._send(200, folder)
        elif parts == ["api", "datasources"]:
            if any(d["name"] == body["name"] for d in srv.datasources.values()):
                self._send(409, {"message": "data source with the same name already exists"})
                return True
            ds = self._store_datasource(body, srv.new_id(), 1)
            self._send_datasource(ds, "Datasource added")
        elif parts == ["api", "dashboards", "db"]:
            self._save_dashboard(body)
        elif parts == ["api", "v1", "provisioning", "alert-rules"]:
            self._save_rule(body, 201, None)
        else:
            return False
        return True

    def _put(self, parts: list[str], body: Any) -> bool:
        """The PUT routes; False for one this server does not have."""
        srv = self.server
        if parts[:2] == ["api", "folders"]:
            folder = srv.folders[parts[2]]
            folder.update(title=body["title"], version=folder["version"] + 1)
            self._send(200, folder)
        elif parts[:3] == ["api", "datasources", "uid"]:
            old = srv.datasources[parts[3]]
            ds = self._store_datasource(body, old["id"], old["version"] + 1)
            self._send_datasource(ds, "Datasource updated")
        elif parts[:4] == ["api", "v1", "provisioning", "alert-rules"]:
            if parts[4] not in srv.rules:
                self._send(404, {"message": "rule not found"})
                return True
            self._save_rule(body, 200, srv.rules[parts[4]]["id"])
        else:
            return False
        return True

    def _send_datasource(self, ds: dict[str, Any], message: str) -> None:
        self._send(200, {"datasource": ds, "id": ds["id"], "message": message, "name": ds["name"]})

    def _store_datasource(self, body: dict[str, Any], ds_id: int, version: int) -> dict[str, Any]:
        # Secrets are write-only: Grafana answers with secureJsonFields flags instead.
        secure = {k: True for k in body.get("secureJsonData", {})}
        ds = {k: v for k, v in body.items() if k != "secureJsonData"}
        ds.update(id=ds_id, orgId=1, version=version, readOnly=False, secureJsonFields=secure)
        self.server.datasources[body["uid"]] = ds
        return ds

    def _save_dashboard(self, body: dict[str, Any]) -> None:
        srv = self.server
        model = body["dashboard"]
        if not model.get("title"):
            self._send(400, {"message": "Dashboard title cannot be empty"})
            return
        if body.get("folderUid") not in srv.folders:
            self._send(400, {"message": "folder not found"})
            return
        old = srv.dashboards.get(model["uid"])
        if old is not None and not body.get("overwrite"):
            self._send(412, {"message": "The dashboard has been changed by someone else"})
            return
        version = 1 if old is None else old["dashboard"]["version"] + 1
        dash_id = srv.new_id() if old is None else old["dashboard"]["id"]
        stored = {**model, "id": dash_id, "version": version}
        meta = {"folderUid": body["folderUid"], "slug": model["uid"], "version": version}
        srv.dashboards[model["uid"]] = {"dashboard": stored, "meta": meta}
        self._send(
            200,
            {
                "id": dash_id,
                "uid": model["uid"],
                "url": f"/d/{model['uid']}/{model['uid']}",
                "status": "success",
                "version": version,
                "slug": model["uid"],
            },
        )

    def _save_rule(self, body: dict[str, Any], status: int, rule_id: int | None) -> None:
        srv = self.server
        if body.get("folderUID") not in srv.folders:
            self._send(400, {"message": "invalid alert rule: folder does not exist"})
            return
        for query in body["data"]:
            if query["datasourceUid"] not in (*srv.datasources, "__expr__"):
                self._send(400, {"message": "invalid alert rule: data source not found"})
                return
        rule = {
            **body,
            "id": rule_id or srv.new_id(),
            "updated": "2026-01-15T06:00:00Z",
            "provenance": "api",
        }
        srv.rules[body["uid"]] = rule
        self._send(status, rule)

    def do_GET(self) -> None:
        """GET."""
        self._handle("GET")

    def do_POST(self) -> None:
        """POST."""
        self._handle("POST")

    def do_PUT(self) -> None:
        """PUT."""
        self._handle("PUT")


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    """A fake Grafana on a free loopback port."""
    server = FakeGrafana()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


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
