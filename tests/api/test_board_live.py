"""The overview's moving window from the API's board equals the one read from InfluxDB.

Real Mosquitto, InfluxDB, ingest worker and API process, on a stack of this test's own
(it kills the broker); readings published with a real client, some before the API starts
(its board is seeded from InfluxDB), some after (the ingest announces them), a device
going offline, streetlights; then the broker killed and restarted (the board is seeded
anew) and more readings.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from ledgerpub import LedgerPublisher, reading
from support import influx_rows, mosquitto_pub, wait_for

from control.stack import LocalStack
from safecity import topics
from safecity.readings import format_ts
from safecity.registry import default_city
from simulators.generators import generate

CITY = default_city()
KINDS = ("air_quality", "traffic", "noise", "parking", "crowd", "streetlight")
VOLATILE = ("generated_at", "served_by")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    """This test's own broker and InfluxDB: it kills the broker."""
    with LocalStack(tmp_path / "stack", mqtt_port=0, influx_port=0) as started:
        yield started


def readings(start: datetime, minutes: int, seed: int) -> list:
    """Four devices of each kind, a reading a minute each, from `start` on."""
    rng = random.Random(seed)
    devices = [d for kind in KINDS for d in CITY.select(kind=kind)[:4]]
    out = []
    for k in range(minutes):
        for i, device in enumerate(devices):
            ts = start + timedelta(minutes=k, milliseconds=7 * i)
            values = dict(generate(device, rng, ts))
            out.append(reading(CITY, device, seq=seed * 100_000 + k, ts=ts, values=values))
    return out


def close(a: Any, b: Any) -> bool:
    """Equal, numbers to 1e-9 relative (the board adds a device's points as InfluxDB's
    `mean()` does, but nothing promises the same order of additions)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
    return bool(a == b)


class City:
    """The test's view: publish, count what InfluxDB holds, read the API."""

    def __init__(self, stack: LocalStack, db: str, tmp_path: Path) -> None:
        self.stack, self.db, self.tmp_path = stack, db, tmp_path
        self.published = 0

    def publish(self, messages: list) -> None:
        """Publish and wait until InfluxDB holds every reading published so far."""
        pub = LedgerPublisher(self.stack.mqtt_settings("_simulator"), self.tmp_path / "l.jsonl")
        pub.start(messages, rate=2000)
        pub.join()
        self.published += len(messages)
        count = 'SELECT count("seq") AS n FROM /.*/'
        held = lambda: sum(r["n"] for r in influx_rows(self.stack, self.db, count))  # noqa: E731
        wait_for(lambda: held() == self.published, 30, "the readings stored")

    def board_figure(self, api: Any, name: str) -> float:
        text = httpx.get(f"{api.url}/metrics", headers=api.headers, timeout=10).text
        found = re.search(rf'^{name}{{city="{CITY.id}"}} (\S+)$', text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    def assert_board_equals_influxdb(self, api: Any) -> dict[str, Any]:
        """The moving overview (from the board) equals the one of its bounds (InfluxDB)."""
        path = f"/v1/cities/{CITY.id}/overview"
        got: dict[str, Any] = {}

        def same() -> bool:
            moving = httpx.get(f"{api.url}{path}", headers=api.headers, timeout=30).json()
            bounds = {"from": moving["window"]["from"], "to": moving["window"]["to"]}
            fixed = httpx.get(f"{api.url}{path}", params=bounds, headers=api.headers, timeout=30)
            got.update(moving=moving, fixed=fixed.json())
            strip = lambda o: {k: v for k, v in o.items() if k not in VOLATILE}  # noqa: E731
            return close(strip(moving), strip(got["fixed"]))

        # The last announcements reach the board a moment after InfluxDB holds them.
        wait_for(same, 15, "the board's overview equal to InfluxDB's")
        moving, fixed = got["moving"], got["fixed"]
        assert {s["tier"] for p in moving["served_by"].values() for s in p} == {"board"}
        assert {s["tier"] for p in fixed["served_by"].values() for s in p} == {"raw"}
        return moving


def test_the_moving_overview_from_the_board_equals_the_one_read_from_influxdb(
    stack, start_ingest, start_api, tmp_path
) -> None:
    influx_db = "board"  # the ingest creates it
    start_ingest(influx_db)
    city = City(stack, influx_db, tmp_path)
    now = datetime.now(UTC).replace(microsecond=0)
    city.publish(readings(now - timedelta(minutes=25), 14, seed=1))  # seeded from InfluxDB

    api = start_api(influx_db, SAFECITY_OVERVIEW_CACHE_TTL="0")
    wait_for(lambda: city.board_figure(api, "safecity_api_board_ready") == 1, 30, "the seed")
    city.publish(readings(now - timedelta(minutes=11), 6, seed=2))  # announced by the ingest
    gone = CITY.select(kind="noise")[0]
    status = {"ts": format_ts(now - timedelta(seconds=5)), "state": "offline", "reason": "lost"}
    mosquitto_pub(
        stack,
        topics.status_topic(CITY.id, gone.district, gone.kind, gone.id),
        json.dumps(status),
    )
    moving = city.assert_board_equals_influxdb(api)
    # What the comparison covered: figures of every kind, the offline device, the lights.
    assert moving["devices"]["offline"] >= 1
    assert moving["air_quality"]["aqi"]["value"] is not None
    assert moving["streetlights"]["on"]["devices"] == 4
    assert moving["noise"]["laeq"]["devices"] == 4
    # Only the ingest may announce: the account that writes for every device cannot.
    taken = city.board_figure(api, "safecity_api_board_points_total")
    assert taken > 0
    forged = f"noise,city={CITY.id},district={gone.district},device_id={gone.id} laeq=120.0 "
    mosquitto_pub(
        stack, topics.stored_topic(CITY.id, "forger"), forged + str(int(now.timestamp() * 1000))
    )
    # Refused at the broker (mosquitto_pub returned on its PUBACK); one real reading after
    # it is the one point the board takes.
    city.publish(readings(now - timedelta(seconds=30), 1, seed=4)[:1])
    points = lambda: city.board_figure(api, "safecity_api_board_points_total")  # noqa: E731
    wait_for(lambda: points() > taken, 15, "the real reading announced")
    assert points() == taken + 1

    # A broker crash: what is announced while the API is away never reaches it, so the
    # board is seeded again once the API is back; then it follows the ingest again.
    stack.mosquitto.kill()
    stack.mosquitto.start()
    wait_for(lambda: city.board_figure(api, "safecity_api_board_seeds_total") == 2, 60, "reseed")
    city.publish(readings(now - timedelta(minutes=5), 4, seed=3))
    city.assert_board_equals_influxdb(api)
