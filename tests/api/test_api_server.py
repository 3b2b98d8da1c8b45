"""api.server.serve: real uvicorn on a free port, stopped by cancelling its task."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx
import pytest
from support import wait_for_async

from api.server import serve
from api.settings import ApiSettings
from control.stack import Influxd, free_port
from safecity.errors import ApiStartupError, RegistryError
from safecity.settings import InfluxSettings


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def _wait_healthy(url: str, task: asyncio.Task[None]) -> httpx.Response:
    async with httpx.AsyncClient() as http:

        async def answered() -> httpx.Response | None:
            assert not task.done(), task.exception()
            try:
                return await http.get(url, timeout=1)
            except httpx.TransportError:
                return None

        response: httpx.Response = await wait_for_async(
            answered, 10, "the API to come up", interval=0.05
        )
        return response


def test_serve_answers_and_stops_cleanly_on_cancel(influxd: Influxd) -> None:
    port = free_port()
    settings = ApiSettings(influx=InfluxSettings(url=influxd.url, database="api_server"), port=port)

    async def run() -> None:
        task = asyncio.create_task(serve(settings))
        response = await _wait_healthy(f"http://127.0.0.1:{port}/healthz", task)
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}
        async with httpx.AsyncClient() as http:
            ready = await http.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert ready.status_code == 200
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        assert task.cancelled()

    asyncio.run(run())
    assert _port_is_free(port)


def test_serve_on_a_busy_port_raises(influxd: Influxd) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = ApiSettings(influx=InfluxSettings(url=influxd.url), port=port)
        with pytest.raises(ApiStartupError):
            asyncio.run(asyncio.wait_for(serve(settings), 10))


def test_serve_with_a_bad_registry_raises(tmp_path: Path) -> None:
    registry = tmp_path / "city.jsonl"
    registry.write_text('{"type": "nonsense"}\n', encoding="utf-8")
    settings = ApiSettings(registry=registry, port=free_port())
    with pytest.raises(RegistryError):
        asyncio.run(serve(settings))
