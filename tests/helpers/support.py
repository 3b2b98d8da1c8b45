"""Helpers shared by tests: publish and subscribe with Mosquitto's own clients, query InfluxDB."""

from __future__ import annotations

import asyncio
import inspect
import json
import secrets
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, cast

import httpx

from control.stack import LocalStack, Mosquitto
from safecity import topics

# Broker accounts the tests act as. The simulator account may publish on every device's
# topics (also unknown devices' and others' ids: the ingest's dead-letter cases) and on
# `_services`; the read-only API account sees everything under safecity/v1/ (dead
# letters, alerts). Neither may do more.
PUBLISHER = "_simulator"
READER = "_api"


class Broker(Protocol):
    """Where a broker listens (a `LocalStack`, or an instance's state)."""

    mqtt_host: str
    mqtt_port: int


def mosquitto(
    tool: str,
    stack: Broker | Mosquitto,
    username: str | None,
    *,
    secret: str | None = None,
    client_id: str | None = None,
    version: str = "mqttv5",
    port: int | None = None,
) -> list[str]:
    """The start of a `mosquitto_pub`/`mosquitto_sub` command line (`tool` may be a path):
    the broker (a stack's or a bare `Mosquitto`), the MQTT version, the login (`username`
    with its own secret unless `secret` is given; none for None) and a client id (a fresh
    `test-...` one unless given: the broker refuses empty ones). The caller adds QoS,
    topics and payloads. The benchmarks use it too (as `tests.helpers.support`)."""
    if isinstance(stack, Mosquitto):
        host, own_port = stack.host, stack.port
    else:
        host, own_port = stack.mqtt_host, stack.mqtt_port
    argv = [tool, "-h", host, "-p", str(port or own_port), "-V", version]
    if username is not None:
        if secret is None:
            secret = cast(LocalStack | Mosquitto, stack).secret(username)
        argv += ["-u", username, "-P", secret]
    return [*argv, "-i", client_id or f"test-{secrets.token_hex(4)}"]


def account_env(stack: LocalStack, service: str) -> dict[str, str]:
    """SAFECITY_MQTT__USERNAME/PASSWORD of a service's own account (`ingest`, `api`, ...).

    For `simulator` also SAFECITY_EDGE__SECRETS_FILE: each simulated device logs in as
    itself with its own secret.
    """
    username = f"_{service}"
    env = {"SAFECITY_MQTT__USERNAME": username, "SAFECITY_MQTT__PASSWORD": stack.secret(username)}
    if service == "simulator":
        env["SAFECITY_EDGE__SECRETS_FILE"] = str(stack.secrets_file)
    return env


def mosquitto_pub(stack: LocalStack, topic: str, *payloads: str) -> None:
    """Publish with Mosquitto's own client as the simulator account, QoS 1, MQTT v5 (one
    message per line)."""
    subprocess.run(
        [*mosquitto("mosquitto_pub", stack, PUBLISHER), "-q", "1", "-t", topic, "-l"],
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


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 20.0,
    what: str = "condition",
    interval: float = 0.1,
) -> Any:
    """The tests' one way to wait: poll `condition` until it returns something true, and
    return that; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def wait_for_async(
    condition: Callable[[], Awaitable[Any]] | Callable[[], Any],
    within: float = 20.0,
    what: str = "condition",
    interval: float = 0.1,
) -> Any:
    """`wait_for` inside an event loop: the loop keeps running between looks (`condition`
    may be a coroutine function, awaited, or a plain one)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {within}s waiting for {what}")


def holds_for(
    condition: Callable[[], Any], seconds: float, what: str, interval: float = 0.1
) -> None:
    """The tests' one way to show that nothing happened: `condition` stays true throughout
    `seconds` (AssertionError naming `what` the moment it does not). The caller states
    why `seconds` is long enough for what it rules out to have shown."""
    deadline = time.monotonic() + seconds
    while True:
        assert condition(), f"{what} stopped holding"
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)


class DeadLetterWatcher:
    """Collects dead letters from the broker with mosquitto_sub (a client we did not write)."""

    def __init__(self, stack: LocalStack, out: Path, city: str) -> None:
        self.out = out
        self.handle = out.open("w")
        # Only ingest may write dead letters, so the probe goes to a `_services` topic the
        # simulator account may write and the (read-only) watcher also follows.
        probe = topics.service_status_topic(city, f"probe-{secrets.token_hex(4)}")
        self.proc = subprocess.Popen(
            [
                *mosquitto("mosquitto_sub", stack, READER),
                *("-q", "1", "-v", "-t", topics.deadletter_filter(city), "-t", probe),
            ],
            stdout=self.handle,
            stderr=subprocess.STDOUT,
        )
        # mosquitto_sub has subscribed once a probe message comes back.
        wait_for(lambda: self._probe(stack, probe), 10, "mosquitto_sub subscription")
        self.probe = probe

    def _probe(self, stack: LocalStack, topic: str) -> bool:
        """Whether a probe came back; if not, send one (the next poll looks for it)."""
        if topic in self.out.read_text():
            return True
        subprocess.run(
            [*mosquitto("mosquitto_pub", stack, PUBLISHER), "-t", topic, "-m", "{}"],
            check=True,
            timeout=10,
        )
        return False

    def letters(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for line in self.out.read_text().splitlines():
            topic, _, body = line.partition(" ")
            if topic == self.probe:
                continue
            out.append((topic, json.loads(body)))
        return out

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        self.handle.close()
