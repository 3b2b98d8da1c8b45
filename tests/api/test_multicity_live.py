"""The live stream of each city of a two-city `safecity api` process, over real Mosquitto:
a stream carries its own city's readings only."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from support import mosquitto_pub

from control.stack import LocalStack
from safecity import registry, topics
from safecity.citygen import builtin_cities
from safecity.readings import format_ts
from safecity.registry import Device


def _noise(seq: int, laeq: float) -> str:
    values = {"laeq": laeq, "lamax": laeq + 10, "la90": laeq - 10}
    return json.dumps({"ts": format_ts(datetime.now(UTC)), "seq": seq, "values": values})


def _topic(city: str, device: Device) -> str:
    return topics.telemetry_topic(city, device.district, device.kind, device.id)


def test_each_citys_stream_carries_only_that_city(
    stack: LocalStack, influx_db: str, start_api: Callable[..., Any], tmp_path: Path
) -> None:
    cities = builtin_cities(["tashkent", "samarkand"])
    files = []
    for city in cities.values():
        path = tmp_path / f"{city.id}.jsonl"
        registry.write(city, path)
        files.append(str(path))
    api = start_api(influx_db, SAFECITY_REGISTRY=",".join(files))
    tashkent = cities["tashkent"].select(kind="noise")[0]
    samarkand = cities["samarkand"].select(kind="noise")[0]
    params = {"city": "samarkand", "kind": "noise"}
    with httpx.stream(
        "GET", f"{api.url}/v1/stream", params=params, headers=api.headers, timeout=20
    ) as response:
        assert response.status_code == 200, response.read()
        lines = response.iter_lines()
        assert next(lines) == ": connected"
        mosquitto_pub(stack, _topic("tashkent", tashkent), _noise(1, 55.0))
        mosquitto_pub(stack, _topic("samarkand", samarkand), _noise(2, 66.0))
        event_line = next(line for line in lines if line.startswith("event:"))
        data_line = next(lines)
    assert event_line == "event: reading"
    item = json.loads(data_line.removeprefix("data: "))
    assert (item["device_id"], item["values"]["laeq"]) == (samarkand.id, 66.0)
