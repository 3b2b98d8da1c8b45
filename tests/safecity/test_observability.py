"""Structured logs and the health/metrics endpoint that every service without FastAPI uses."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Callable

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from safecity.errors import ConfigError
from safecity.observability import HealthServer, JsonFormatter, configure_logging


def _logger(service: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(service))
    logger = logging.getLogger(f"safecity.test.{service}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_one_json_object_per_record() -> None:
    logger, stream = _logger("ingest")
    logger.info("stored %d points", 42, extra={"batch": 7, "device_id": "aq-1"})
    logger.warning('multi\nline "quoted" message')
    logger.debug("odd extra", extra={"where": object()})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    first, second, third = (json.loads(line) for line in lines)
    assert first["msg"] == "stored 42 points"
    assert first["level"] == "info"
    assert first["service"] == "ingest"
    assert first["logger"] == "safecity.test.ingest"
    assert first["batch"] == 7
    assert first["device_id"] == "aq-1"
    assert first["ts"].endswith("Z")
    assert len(first["ts"]) == len("2026-01-15T06:00:00.000Z")
    assert second["msg"] == 'multi\nline "quoted" message'
    assert second["level"] == "warning"
    # Standard LogRecord attributes are not repeated as extras.
    assert not {"args", "levelno", "pathname", "lineno", "msecs", "thread"} & set(first)
    assert isinstance(third["where"], str)


def test_exceptions_are_inside_the_json_line() -> None:
    logger, stream = _logger("api")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["level"] == "error"
    assert "ValueError: boom" in record["exc"]


def test_configure_logging_writes_json_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        configure_logging("simulator", "debug")
        logging.getLogger("safecity.sim").debug("tick", extra={"n": 1})
        err = capsys.readouterr().err
        record = json.loads(err.splitlines()[-1])
        assert record["service"] == "simulator"
        assert record["msg"] == "tick"
        assert record["n"] == 1
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


async def _serve(
    ready: Callable[[], bool], registry: CollectorRegistry, requests: list[tuple[str, str]]
) -> list[httpx.Response]:
    server = HealthServer("127.0.0.1", 0, ready, registry)
    await server.start()
    assert server.port != 0
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            return [await client.request(method, path) for method, path in requests]
    finally:
        await server.stop()
        await server.stop()


def test_health_server() -> None:
    registry = CollectorRegistry()
    counter = Counter("safecity_test_things", "Things counted", registry=registry)
    counter.inc(3)
    state = {"ready": True}
    responses = asyncio.run(
        _serve(
            lambda: state["ready"],
            registry,
            [
                ("GET", "/metrics"),
                ("GET", "/healthz"),
                ("GET", "/readyz"),
                ("GET", "/nope"),
                ("GET", "/readyz?verbose=1"),
                ("POST", "/healthz"),
            ],
        )
    )
    metrics, health, ready, missing, ready_query, post = responses
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "# TYPE safecity_test_things_total counter" in metrics.text
    assert "safecity_test_things_total 3.0" in metrics.text
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}
    assert missing.status_code == 404
    assert ready_query.status_code == 200
    assert post.status_code == 405


def test_readyz_follows_the_callable() -> None:
    calls: list[bool] = []

    def ready() -> bool:
        calls.append(True)
        return len(calls) > 1

    responses = asyncio.run(
        _serve(ready, CollectorRegistry(), [("GET", "/readyz"), ("GET", "/readyz")])
    )
    assert [r.status_code for r in responses] == [503, 200]
    assert responses[0].json()["status"] == "not ready"
    assert responses[0].json()["detail"]
    assert responses[1].json() == {"status": "ready"}


def test_two_servers_get_distinct_free_ports() -> None:
    async def main() -> tuple[int, int]:
        a = HealthServer("127.0.0.1", 0, lambda: True, CollectorRegistry())
        b = HealthServer("127.0.0.1", 0, lambda: True, CollectorRegistry())
        await a.start()
        await b.start()
        try:
            return a.port, b.port
        finally:
            await a.stop()
            await b.stop()

    port_a, port_b = asyncio.run(main())
    assert port_a != port_b
    assert port_a > 0 and port_b > 0


def test_a_taken_metrics_port_is_a_one_line_error() -> None:
    async def main() -> None:
        first = HealthServer("127.0.0.1", 0, lambda: True, registry=CollectorRegistry())
        await first.start()
        try:
            second = HealthServer("127.0.0.1", first.port, lambda: True)
            with pytest.raises(ConfigError) as caught:
                await second.start()
            assert f"127.0.0.1:{first.port}" in str(caught.value)
            assert "\n" not in str(caught.value)
        finally:
            await first.stop()

    asyncio.run(main())
