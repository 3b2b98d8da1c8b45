"""Helpers shared by tests: publish and subscribe with Mosquitto's own clients, query InfluxDB."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from safecity import topics
from safecity.stack import LocalStack


def mosquitto_pub(stack: LocalStack, topic: str, *payloads: str) -> None:
    """Publish with Mosquitto's own client, QoS 1, MQTT v5 (one message per line)."""
    subprocess.run(
        # The broker refuses zero-length client ids, so name ourselves.
        [
            "mosquitto_pub",
            "-h",
            stack.mqtt_host,
            "-p",
            str(stack.mqtt_port),
            "-V",
            "mqttv5",
            "-i",
            f"test-pub-{secrets.token_hex(4)}",
            "-q",
            "1",
            "-t",
            topic,
            "-l",
        ],
        input="\n".join(payloads) + "\n",
        text=True,
        check=True,
        timeout=30,
    )


def influx_rows(stack: LocalStack, db: str, q: str, **params: Any) -> list[dict[str, Any]]:
    data = {"q": q, "db": db}
    if params:
        data["params"] = json.dumps(params)
    body = httpx.post(
        f"{stack.influx_url}/query", data=data, params={"epoch": "ms"}, timeout=10
    ).json()
    rows = []
    for result in body["results"]:
        assert "error" not in result, result
        for series in result.get("series", []):
            for values in series["values"]:
                rows.append(
                    {**series.get("tags", {}), **dict(zip(series["columns"], values, strict=True))}
                )
    return rows


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class DeadLetterWatcher:
    """Collects dead letters from the broker with mosquitto_sub (a client we did not write)."""

    def __init__(self, stack: LocalStack, out: Path, city: str) -> None:
        self.out = out
        self.handle = out.open("w")
        self.proc = subprocess.Popen(
            [
                "mosquitto_sub",
                "-h",
                stack.mqtt_host,
                "-p",
                str(stack.mqtt_port),
                "-V",
                "mqttv5",
                "-i",
                f"test-sub-{secrets.token_hex(4)}",
                "-q",
                "1",
                "-v",
                "-t",
                topics.deadletter_filter(city),
            ],
            stdout=self.handle,
            stderr=subprocess.STDOUT,
        )
        # mosquitto_sub has subscribed once a probe message comes back.
        probe = topics.deadletter_topic(city, "probe")
        wait_for(lambda: self._probe(stack, probe), 10, "mosquitto_sub subscription")

    def _probe(self, stack: LocalStack, topic: str) -> bool:
        subprocess.run(
            [
                "mosquitto_pub",
                "-h",
                stack.mqtt_host,
                "-p",
                str(stack.mqtt_port),
                "-i",
                f"test-probe-{secrets.token_hex(4)}",
                "-t",
                topic,
                "-m",
                "{}",
            ],
            check=True,
            timeout=10,
        )
        time.sleep(0.1)
        return topic in self.out.read_text()

    def letters(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for line in self.out.read_text().splitlines():
            topic, _, body = line.partition(" ")
            if topic.endswith("/probe"):
                continue
            out.append((topic, json.loads(body)))
        return out

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        self.handle.close()
