"""Every generated dashboard, alert rule, contact point and policy against Grafana's own
schema models (grafana-foundation-sdk, pinned to the compose file's Grafana minor):
a key the models do not know is dropped by their round trip, and the test fails on it."""

from __future__ import annotations

import copy
import json
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from grafana_foundation_sdk.cog import encoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import alerting as sdk_alerting
from grafana_foundation_sdk.models import units
from grafana_foundation_sdk.models.dashboard import Dashboard

from dashboards import alerting, build
from safecity.registry import default_city

ROOT = Path(__file__).resolve().parents[2]
register_default_plugins()  # panel options and field configs decode through their models
BOARDS = build.dashboards(default_city())
UNITS = {v for k, v in vars(units).items() if not k.startswith("_") and isinstance(v, str)}


def _plain(model: Any) -> Any:
    return json.loads(json.dumps(model, cls=encoder.JSONEncoder))


def dropped(sent: Any, back: Any, path: str = "") -> list[str]:
    """Paths of `sent` that the round trip lost or reshaped."""
    if isinstance(sent, dict):
        if not isinstance(back, dict):
            return [f"{path}: not an object any more"]
        out = []
        for key, value in sent.items():
            out += (
                [f"{path}.{key}"] if key not in back else dropped(value, back[key], f"{path}.{key}")
            )
        return out
    if isinstance(sent, list):
        if not isinstance(back, list) or len(back) != len(sent):
            return [f"{path}: list changed"]
        return [
            p
            for i, (a, b) in enumerate(zip(sent, back, strict=True))
            for p in dropped(a, b, f"{path}[{i}]")
        ]
    return []


def test_the_sdk_is_pinned_to_the_compose_files_grafana() -> None:
    image = re.search(
        r"image: grafana/grafana-oss:(\d+)\.(\d+)\.\d+", (ROOT / "docker-compose.yml").read_text()
    )
    assert image is not None
    sdk = metadata.version("grafana-foundation-sdk")
    assert sdk.split("!")[-1].startswith(f"{image.group(1)}.{image.group(2)}."), sdk


@pytest.mark.parametrize("board", BOARDS, ids=lambda b: b["uid"])
def test_dashboard_round_trips_through_grafanas_model(board: dict[str, Any]) -> None:
    assert dropped(board, _plain(Dashboard.from_json(copy.deepcopy(board)))) == []


def test_an_unknown_key_is_caught() -> None:
    board = copy.deepcopy(BOARDS[0])
    panel = next(p for p in board["panels"] if p["type"] == "timeseries")
    panel["options"]["legendd"] = {}
    panel["fieldConfig"]["defaults"]["custom"] = {"drawStyle": "line", "lineWidht": 2}
    panel["fieldConfig"]["defaults"]["colour"] = {}
    board["templating"]["list"][0]["definition"] = "x"
    lost = dropped(board, _plain(Dashboard.from_json(board)))
    assert {p.rsplit(".", 1)[-1] for p in lost} == {"legendd", "lineWidht", "colour", "definition"}


@pytest.mark.parametrize("board", BOARDS, ids=lambda b: b["uid"])
def test_units_are_grafana_unit_ids_and_series_have_their_own_colours(
    board: dict[str, Any],
) -> None:
    for panel in board["panels"]:
        defaults = panel["fieldConfig"]["defaults"]
        unit = defaults.get("unit")
        assert unit is None or unit in UNITS or unit.startswith(("suffix:", "prefix:")), (
            panel["title"],
            unit,
        )
        if panel["type"] == "timeseries":
            assert defaults["color"] == {"mode": "palette-classic"}, panel["title"]
            if "thresholds" in defaults:
                assert defaults["custom"]["thresholdsStyle"]["mode"] == "line", panel["title"]


def test_veh_h_is_a_custom_unit_not_an_id() -> None:
    units_used = {p["fieldConfig"]["defaults"].get("unit") for b in BOARDS for p in b["panels"]}
    assert "veh/h" not in units_used and "suffix: veh/h" in units_used


@pytest.mark.parametrize("rule", build.alert_rules(), ids=lambda r: r["uid"])
def test_alert_rule_round_trips_through_grafanas_model(rule: dict[str, Any]) -> None:
    assert dropped(rule, _plain(sdk_alerting.Rule.from_json(copy.deepcopy(rule)))) == []


def test_contact_point_and_policy_round_trip_and_route_every_alert_to_the_intake() -> None:
    point = alerting.contact_point()
    assert dropped(point, _plain(sdk_alerting.ContactPoint.from_json(copy.deepcopy(point)))) == []
    policy = alerting.notification_policy()
    back = _plain(sdk_alerting.NotificationPolicy.from_json(copy.deepcopy(policy)))
    assert dropped(policy, back) == []
    assert point["type"] == "webhook" and policy["receiver"] == point["name"]
    assert point["settings"]["url"] == "${SAFECITY_GRAFANA_WEBHOOK_URL}"
    provisioned = build.alerting_provisioning()
    (contact,) = provisioned["contactPoints"]
    assert contact["name"] == point["name"]
    assert contact["receivers"][0]["uid"] == point["uid"]
    assert provisioned["policies"][0]["receiver"] == point["name"]


def test_compose_gives_grafana_every_variable_the_alerting_file_expands() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = compose["services"]["grafana"]["environment"]
    text = (build.OUT / "provisioning" / "alerting" / "safecity.yaml").read_text()
    wanted = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)\}", text))
    assert wanted == {"SAFECITY_GRAFANA_WEBHOOK_URL"}
    assert wanted <= set(env)
    # The key is a secret: read from a file compose mounts for Grafana, never its env.
    files = set(re.findall(r"\$__file\{/run/secrets/(\w+)\}", text))
    assert files == {"grafana_webhook_key"}
    assert files <= set(compose["services"]["grafana"]["secrets"])
    assert env["SAFECITY_GRAFANA_WEBHOOK_URL"].endswith(alerting.WEBHOOK_PATH)
