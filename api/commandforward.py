"""Command routes of an API replica that runs no command service, answered by the one that does.

The command store (SQLite) and the command role's persistent broker session belong to
exactly one process. On Kubernetes that is the single-replica `safecity-api-commands`
Deployment (its own volume, Recreate); the scaled `safecity-api` replicas set
`SAFECITY_COMMANDS__URL` to its Service and pass every command request there unchanged
(method, path, query, body, the caller's key or session headers). The owner checks the
caller, the parameters and the rate limit itself; its answer comes back as it is.
"""

from __future__ import annotations

import re

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["COMMAND_PATH", "CommandForwarder"]

COMMAND_PATH = re.compile(
    r"^/v1/(?:commands(?:/[^/]+)?|devices/[^/]+/commands|cities/[^/]+/districts/[^/]+/commands)$"
)
"""The paths of api.routes.commands (kept equal by tests/api/test_commandforward.py)."""
# Per hop, never passed on (RFC 9110 7.6.1), and what httpx sets itself.
_HOP = frozenset(
    {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "host",
     "content-length"}
)  # fmt: skip
TIMEOUT_S = 15.0


class CommandForwarder:
    """ASGI middleware: requests on a command path go to `url`, everything else stays here."""

    def __init__(self, app: ASGIApp, url: str) -> None:
        self.app = app
        self.url = url.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Forward a command request; pass any other through."""
        if scope["type"] != "http" or COMMAND_PATH.match(scope["path"]) is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        response = await self._forward(request)
        await response(scope, receive, send)

    async def _forward(self, request: Request) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        if request.client is not None:
            seen = request.headers.get("x-forwarded-for")
            host = request.client.host
            headers["x-forwarded-for"] = f"{seen}, {host}" if seen else host
        target = f"{self.url}{request.url.path}"
        try:
            async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
                answer = await client.request(
                    request.method, target, params=request.url.query or None,
                    content=await request.body(), headers=headers,
                )  # fmt: skip
        except httpx.HTTPError as exc:
            return Response(
                f'{{"detail":"the command service cannot be reached: {type(exc).__name__}"}}',
                status_code=503,
                media_type="application/json",
            )
        out = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
        out.pop("content-encoding", None)  # httpx hands over the decoded body
        return Response(answer.content, status_code=answer.status_code, headers=out)
