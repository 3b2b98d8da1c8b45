"""Command routes of an API replica that runs no command service, answered by the one that does.

The command store (SQLite) and the command role's persistent broker session belong to
exactly one process. On Kubernetes that is the single-replica `safecity-api-commands`
Deployment (its own volume, Recreate); the scaled `safecity-api` replicas set
`SAFECITY_COMMANDS__URL` to its Service and pass every command request there (method,
path, query, body). The replica admits the caller first, as every route does (a key, a
provider's token, or a console session with its CSRF token, whose file the owner may not
share): a refusal is the replica's answer. The caller it admitted goes on as a signed
claim (`api.commandhop`), the caller's own credentials do not. The owner checks that
claim, the parameters and the rate limit, and writes the audit record; its answer comes
back as it is.
"""

from __future__ import annotations

import re

import httpx
from fastapi import HTTPException
from fastapi.security.utils import get_authorization_scheme_param
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from api import audit
from api.apikeys import ApiKey
from api.commandhop import CALLER_HEADER, SIGNATURE_HEADER, vouch
from api.people import CSRF_HEADER
from api.security import HEADER, admit

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
# The caller's credentials stay here: the owner gets the caller as the signed claim.
_CREDENTIALS = frozenset(
    h.lower()
    for h in (HEADER, "authorization", "cookie", CSRF_HEADER, CALLER_HEADER, SIGNATURE_HEADER)
)
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

    async def _admitted(self, request: Request) -> ApiKey | Response:
        """The caller, admitted to an `operate` route here; else the refusal to answer."""
        scheme, token = get_authorization_scheme_param(request.headers.get("authorization"))
        try:
            record = await admit(
                request, request.headers.get(HEADER), "operate",
                token if scheme.lower() == "bearer" and token else None,
            )  # fmt: skip
        except HTTPException as exc:
            return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
        audit.unmark(request.scope)  # admitted: the owner writes the record of the call
        return record

    async def _forward(self, request: Request) -> Response:
        admitted = await self._admitted(request)
        if isinstance(admitted, Response):
            return admitted
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP | _CREDENTIALS}
        key: bytes = request.app.state.hop_key
        headers |= vouch(key, request.method, request.url.path, request.url.query, body, admitted)
        if request.client is not None:
            seen = request.headers.get("x-forwarded-for")
            host = request.client.host
            headers["x-forwarded-for"] = f"{seen}, {host}" if seen else host
        target = f"{self.url}{request.url.path}"
        try:
            async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
                answer = await client.request(
                    request.method, target, params=request.url.query or None,
                    content=body, headers=headers,
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
