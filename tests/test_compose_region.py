"""Federation in docker compose, verified without a Docker engine: docker-compose.yml with
docker-compose.region.yml, every service this needs run here with its exact command and
environment (tests/helpers/composehost.py), the city's broker bridged to the region's over
TLS as the rendered configs say, and the regional overview equal to the city's own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from composehost import ROOT, ComposeHost, api_key, compose_config
from support import wait_for

from control.influxd import Influxd

FILES = (ROOT / "docker-compose.yml", ROOT / "docker-compose.region.yml")
# The publisher's interval, shortened so that a test sees one close (default 300 s).
# The delay covers readings still on their way (the city's own figure would change later,
# the published one not: docs/federation.md).
FAST = {"SAFECITY_FEDERATION__INTERVAL": "5", "SAFECITY_FEDERATION__DELAY": "15"}
SECTIONS = ("air_quality", "traffic", "noise", "devices", "incidents")


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    result = compose_config(*FILES)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


@pytest.fixture
def host(resolved: dict[str, Any], tmp_path: Path) -> Iterator[ComposeHost]:
    with Influxd(tmp_path / "influxdb", auth_enabled=True) as influxd:
        composed = ComposeHost(tmp_path, resolved, influxd.port)
        try:
            yield composed
        finally:
            composed.stop_all()


def test_the_overlay_waits_for_the_region_before_the_city_broker(
    resolved: dict[str, Any],
) -> None:
    services = resolved["services"]
    city_broker = services["mosquitto"]["depends_on"]
    assert city_broker["city-bridge"]["condition"] == "service_completed_successfully"
    assert city_broker["region-mosquitto"]["condition"] == "service_healthy"
    assert services["api"]["environment"]["SAFECITY_FEDERATION__ENABLED"] == "true"
    # What the region hands the city travels in one volume, read-only on the city's side.
    assert "region-bridge:/run/safecity/bridge:ro" in services["mosquitto"]["volumes"]
    for name in ("region-ingest", "region-api"):
        assert services[name]["environment"]["SAFECITY_INFLUX__DATABASE"] == ("safecity_federation")


def _start_everything(host: ComposeHost) -> tuple[str, str]:
    """In compose's dependency order; the city's and the region's API URLs."""
    for one_shot in ("provision", "region-provision", "city-bridge"):
        host.run_one_shot(one_shot)
    host.start_broker("region-mosquitto")
    host.start_broker("mosquitto")
    host.run_one_shot("influx-init")
    host.run_one_shot("region-influx-init")
    host.start("region-ingest")
    host.start("ingest")
    city = host.start("api", **FAST)
    host.start("simulator")
    region = host.start("region-api")
    return (
        f"http://127.0.0.1:{city['SAFECITY_PORT']}",
        f"http://127.0.0.1:{region['SAFECITY_PORT']}",
    )


@pytest.mark.timeout(600)
def test_the_region_overlay_runs_here_and_shows_the_city_as_it_sees_itself(
    host: ComposeHost,
) -> None:
    city_api, region_api = _start_everything(host)
    city_key = api_key(host.env("api"), host.tmp, "region-test", "read")
    region_key = api_key(host.env("region-api"), host.tmp, "region-test", "read")

    def federated() -> dict[str, Any] | None:
        body = httpx.get(
            f"{region_api}/v1/region/overview", headers={"X-API-Key": region_key}, timeout=30
        ).json()
        found = [c for c in body["cities"] if c["city"] == "tashkent"]
        return found[0] if found and found[0]["source"] == "federated" else None

    entry: dict[str, Any] = wait_for(federated, 150, "tashkent's indicators in the region")
    window = {"from": entry["window"]["from"], "to": entry["window"]["to"]}
    own = httpx.get(
        f"{city_api}/v1/cities/tashkent/overview",
        params=window,
        headers={"X-API-Key": city_key},
        timeout=30,
    ).json()
    for section in SECTIONS:
        assert entry[section] == own[section], (section, entry[section], own[section])
    # It came over the bridge: the city's broker logged in to the region's as its account.
    log = (host.tmp / "region-mosquitto.log").read_text()
    assert "u'_bridge.tashkent'" in log
