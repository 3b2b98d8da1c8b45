"""Security headers on every response (a pure ASGI middleware, streaming-safe).

All responses: `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`,
`X-Frame-Options: DENY` and a CSP with `frame-ancestors 'none'`. The console (`/`,
`/console/*`) gets its full same-origin CSP; the JSON API `default-src 'none'` (a JSON
body never loads anything); `/docs` and `/redoc` a same-origin policy (their assets are
bundled, see `api.docs`). Data routes (`/v1/*`, `/metrics`) are `Cache-Control: no-store`.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.docs import CSP as DOCS_CSP_TEXT
from api.routes.console import SECURITY_HEADERS, is_console_path

COMMON: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
API_CSP = b"default-src 'none'; frame-ancestors 'none'"
DOCS_CSP = DOCS_CSP_TEXT.encode()
DOCS_PATHS = ("/docs", "/redoc")
NO_STORE = b"no-store"


def is_data_path(path: str) -> bool:
    """Routes whose responses carry city data (never cached by browsers or proxies)."""
    return path.startswith("/v1/") or path == "/metrics"


def headers_for(path: str) -> tuple[list[tuple[bytes, bytes]], bool]:
    """The headers to add for a path, and whether Cache-Control must become no-store."""
    if is_console_path(path):
        return list(SECURITY_HEADERS), False
    if path in DOCS_PATHS or path.startswith("/docs/"):
        return [*COMMON, (b"content-security-policy", DOCS_CSP)], False
    return [*COMMON, (b"content-security-policy", API_CSP)], is_data_path(path)


class SecurityHeadersMiddleware:
    """Adds the security headers of the path to each response start."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; rewrite the response start's headers."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra, no_store = headers_for(scope.get("path", ""))
        names = {name for name, _ in extra}
        if no_store:
            names.add(b"cache-control")
            extra = [*extra, (b"cache-control", NO_STORE)]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message["headers"] = [*kept, *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)
