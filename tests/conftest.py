"""Shared fixtures: one real Mosquitto + InfluxDB stack per test session, on free ports."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from safecity.stack import Influxd, LocalStack, Mosquitto


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A started LocalStack (broker + InfluxDB) in a temp dir, stopped at session end."""
    base: Path = tmp_path_factory.mktemp("stack")
    with LocalStack(base, mqtt_port=0, influx_port=0) as started:
        yield started


@pytest.fixture(scope="session")
def mosquitto(stack: LocalStack) -> Mosquitto:
    """The session's broker."""
    return stack.mosquitto


@pytest.fixture(scope="session")
def influxd(stack: LocalStack) -> Influxd:
    """The session's InfluxDB."""
    return stack.influxd


@pytest.fixture
def influx_db(influxd: Influxd) -> Iterator[str]:
    """Name of a fresh, empty database on the session's InfluxDB (dropped afterwards)."""
    name = f"test_{secrets.token_hex(6)}"
    response = httpx.post(
        f"{influxd.url}/query", data={"q": f'CREATE DATABASE "{name}"'}, timeout=10
    )
    response.raise_for_status()
    yield name
    # Best effort: a test that stopped or paused influxd must not fail here.
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(f"{influxd.url}/query", data={"q": f'DROP DATABASE "{name}"'}, timeout=5)
