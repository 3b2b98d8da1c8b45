"""The committed Grafana provisioning is the generator's output, with unique stable UIDs/titles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from control import cli
from dashboards import build
from dashboards.settings import DashboardsSettings

ROOT = Path(__file__).resolve().parents[2]


def load_yaml(path: Path) -> Any:
    """Our YAML files are a comment line plus JSON (JSON is YAML 1.2)."""
    text = path.read_text(encoding="utf-8")
    assert text.startswith(build.HEADER)
    return json.loads(text[len(build.HEADER) :])


def committed_dashboards() -> list[dict[str, Any]]:
    return [
        json.loads(p.read_text(encoding="utf-8"))
        for p in sorted((build.OUT / "dashboards").glob("*.json"))
    ]


def test_committed_files_equal_a_fresh_generation(tmp_path: Path) -> None:
    written = build.write(tmp_path)
    assert len(written) == 13  # 3 provisioning files, 9 dashboards, grafana.ini
    for path in written:
        rel = path.relative_to(tmp_path)
        assert (build.OUT / rel).read_bytes() == path.read_bytes(), f"{rel} is stale: regenerate"
    assert build.differences(build.OUT) == []
    assert cli.main(["dashboards", "build", "--check"]) == 0


def test_check_reports_changed_missing_and_stray_files(tmp_path: Path) -> None:
    build.write(tmp_path)
    (tmp_path / "dashboards" / "traffic.json").write_text("{}\n")
    (tmp_path / "dashboards" / "air-quality.json").unlink()
    (tmp_path / "dashboards" / "old.json").write_text("{}\n")
    assert build.differences(tmp_path) == [
        "missing dashboards/air-quality.json",
        "not generated dashboards/old.json",
        "changed dashboards/traffic.json",
    ]
    assert cli.main(["dashboards", "build", "--check", "--out", str(tmp_path)]) == 1
    # Regenerating repairs all three, stray file included.
    assert cli.main(["dashboards", "build", "--out", str(tmp_path)]) == 0
    assert build.differences(tmp_path) == []
    assert not (tmp_path / "dashboards" / "old.json").exists()


def test_dashboard_uids_titles_and_panels_are_unique_and_valid() -> None:
    boards = committed_dashboards()
    assert len(boards) == 9
    uids = [b["uid"] for b in boards]
    titles = [b["title"] for b in boards]
    assert len(set(uids)) == 9 and len(set(titles)) == 9
    assert all(len(uid) <= 40 and uid.startswith("safecity-") for uid in uids)
    for board in boards:
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), board["uid"]
        assert [v["name"] for v in board["templating"]["list"]][:2] == ["city", "district"]
        for panel in board["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
            assert panel["targets"], panel["title"]
            for t in panel["targets"]:
                assert t["datasource"] == {"type": "influxdb", "uid": build.DATASOURCE_UID}
                assert t["rawQuery"] is True and t["query"].startswith(("SELECT", "SHOW"))
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), panel["title"]
    overview = next(b for b in boards if b["uid"] == "safecity-city-overview")
    geomap = next(p for p in overview["panels"] if p["type"] == "geomap")
    assert len(geomap["targets"]) == 12  # one per Tashkent district


def test_provisioning_files_use_fixed_uids_and_grafana_env_expansion() -> None:
    prov = build.OUT / "provisioning"
    ds = load_yaml(prov / "datasources" / "safecity.yaml")["datasources"][0]
    assert ds["uid"] == build.DATASOURCE_UID and ds["type"] == "influxdb"
    assert ds["url"] == "${SAFECITY_INFLUX__URL}"
    assert ds["jsonData"]["dbName"] == "${SAFECITY_INFLUX__DATABASE}"
    provider = load_yaml(prov / "dashboards" / "safecity.yaml")["providers"][0]
    assert provider["folderUid"] == build.FOLDER_UID
    assert provider["options"]["path"] == build.DASHBOARDS_DIR
    alerting = load_yaml(prov / "alerting" / "safecity.yaml")
    assert alerting["apiVersion"] == 1
    rules = alerting["groups"][0]["rules"]
    uids = [r["uid"] for r in rules]
    titles = [r["title"] for r in rules]
    assert len(set(uids)) == len(uids) == 9 and len(set(titles)) == 9
    assert {"safecity-who-pm25", "safecity-device-offline", "safecity-ingest-lag"} <= set(uids)
    assert "safecity-broker-drops" in uids
    pm25 = next(r for r in rules if r["uid"] == "safecity-who-pm25")
    assert pm25["data"][0]["relativeTimeRange"]["from"] == 86_400
    assert pm25["data"][2]["model"]["conditions"][0]["evaluator"] == {"type": "gt", "params": [15]}
    for rule in rules:
        # Grafana interpolates env vars in rule labels: a `$` there would be eaten.
        assert all("$" not in v for v in rule["labels"].values()), rule["uid"]
        assert rule["condition"] == "C"
        assert rule["data"][0]["datasourceUid"] == build.DATASOURCE_UID


def _env_names(model: type[BaseModel], prefix: str = "SAFECITY_") -> set[str]:
    names = set()
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= _env_names(annotation, f"{prefix}{name.upper()}__")
        else:
            names.add(f"{prefix}{name.upper()}")
    return names


def test_docs_carry_the_ingest_stats_contract_and_every_setting() -> None:
    doc = (ROOT / "docs" / "schema.md").read_text(encoding="utf-8")
    assert build.ingest_stats_markdown() in doc
    env = (ROOT / ".env.example").read_text(encoding="utf-8")
    missing = sorted(n for n in _env_names(DashboardsSettings) if f"{n}=" not in env)
    assert missing == []
