"""Run the API under uvicorn inside the caller's event loop; cancelling the task stops it.

uvicorn's own signal handling is switched off: the caller (the `safecity` CLI)
owns SIGINT/SIGTERM and cancels the task running `serve`, which then shuts the
server down gracefully (stop accepting, finish in-flight requests within a grace
period, run the lifespan shutdown) before re-raising the cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import uvicorn

from api.app import create_app
from api.settings import ApiSettings
from safecity.errors import ApiStartupError
from safecity.registry import load_cities

log = logging.getLogger("safecity.api")

GRACEFUL_SHUTDOWN_S = 5.0


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the caller."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build_server(settings: ApiSettings) -> uvicorn.Server:
    """The uvicorn server for the API app (registries loaded up front, so errors surface here)."""
    cities = load_cities(settings.registry)
    config = uvicorn.Config(
        app=create_app(settings, cities=cities),
        host=settings.host,
        port=settings.port,
        log_config=None,
        lifespan="on",
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=int(GRACEFUL_SHUTDOWN_S),
    )
    return _Server(config)


async def serve(settings: ApiSettings) -> None:
    """Serve the API until cancelled; raise ApiStartupError if it cannot start."""
    server = build_server(settings)
    task = asyncio.create_task(_run(server), name="safecity-api")
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        if task.done():
            raise
        log.info("api shutting down")
        server.should_exit = True
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            # Cancelled again while draining: stop waiting for connections.
            server.force_exit = True
            await task
        raise


async def _run(server: uvicorn.Server) -> None:
    try:
        await server.serve()
    except SystemExit as exc:  # uvicorn exits on bind or lifespan start-up failure
        raise ApiStartupError(
            f"API server failed to start on {server.config.host}:{server.config.port} "
            "(see the log above)"
        ) from exc
    if not server.started and not server.should_exit:
        raise ApiStartupError("API server stopped before it started")
