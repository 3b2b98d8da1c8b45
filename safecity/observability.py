"""Structured JSON log lines and a tiny HTTP endpoint for /metrics, /healthz and /readyz.

Services without a web framework of their own use `HealthServer` (one per process:
`safecity.service.serve`); the API mounts the same Prometheus registry on its FastAPI app.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from safecity.errors import ConfigError

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn duplicates msg with ANSI colours
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, service, logger, msg and any `extra` fields."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as a single JSON line."""
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(service: str, level: str = "INFO") -> None:
    """Send structured log lines for `service` to stderr at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party request logs are noise at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)


_NOT_READY = (
    b'{"status":"not ready","detail":"a dependency is down (broker, storage or a supervised '
    b'task): see /metrics and the log"}\n'
)


# An extra JSON route of a service: query parameters -> (HTTP status, JSON body).
Route = Callable[[Mapping[str, list[str]]], Awaitable[tuple[int, bytes]]]


_STATUS = {200: "200 OK", 400: "400 Bad Request", 404: "404 Not Found"}


class HealthServer:
    """Serves GET /metrics (Prometheus text), /healthz (alive) and /readyz (ready), and a
    service's own read-only JSON `routes` (path -> handler of the query parameters)."""

    def __init__(
        self,
        host: str,
        port: int,
        ready: Callable[[], bool],
        registry: CollectorRegistry = REGISTRY,
        routes: Mapping[str, Route] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._ready = ready
        self._registry = registry
        self._routes = dict(routes or {})
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Start listening; port 0 picks a free port (see `.port` afterwards)."""
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
        except OSError as exc:
            # A clash is a setting to change, not a crash: one line naming the port.
            raise ConfigError(
                f"cannot serve /metrics on {self.host}:{self.port}: {exc.strerror or exc} "
                "(another process holds it? give the service another metrics port, or 0 for "
                "any free one)"
            ) from None
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening; idempotent."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            # Drain the headers; bodies are not accepted.
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.decode("latin-1").split()
            path, _, query = (parts[1] if len(parts) >= 2 else "").partition("?")
            if len(parts) < 2 or parts[0] != "GET":
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif path == "/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(self._registry)
            elif path == "/healthz":
                status, ctype, body = "200 OK", "application/json", b'{"status":"ok"}\n'
            elif path == "/readyz":
                ok = self._ready()
                status = "200 OK" if ok else "503 Service Unavailable"
                ctype = "application/json"
                # The same shape as the API's readiness: {"status", "detail"}.
                body = b'{"status":"ready"}\n' if ok else _NOT_READY
            elif path in self._routes:
                code, body = await self._routes[path](parse_qs(query))
                status, ctype = _STATUS.get(code, f"{code} Error"), "application/json"
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
