"""The built-in web console: `/` and `/console/*` serve static files that hold no data.

The page and its assets need no API key (they contain no data); every data call the
page makes sends the key in `X-API-Key`, the live stream included (fetch streaming,
not EventSource, so the key never travels in a URL). The files are served only from
an allow-list built from `api/console/` at import, so no path reaches the filesystem.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONSOLE_DIR = Path(__file__).resolve().parent.parent / "console"
PREFIX = "/console"

# Everything from this origin, nothing inline, no frames, no plugins; `connect-src`
# lets the page call the API (same origin) and nothing else.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    # `/?key=...` must not leak to anyone through the Referer header.
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
)
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True)
class Asset:
    """One console file held in memory with its content type and ETag."""

    body: bytes
    media_type: str
    etag: str


def load_assets(directory: Path = CONSOLE_DIR) -> dict[str, Asset]:
    """The console's files by name (no subdirectories, no dotfiles)."""
    assets: dict[str, Asset] = {}
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        body = path.read_bytes()
        media = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
        assets[path.name] = Asset(
            body=body,
            media_type=media or "application/octet-stream",
            etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"',
        )
    return assets


ASSETS = load_assets()
router = APIRouter(include_in_schema=False)


def _serve(request: Request, name: str) -> Response:
    asset = ASSETS.get(name)
    if asset is None:
        raise HTTPException(status_code=404, detail="not found")
    # Revalidate every time (cheap 304s): a new release is picked up at once.
    headers = {"ETag": asset.etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.get("/")
async def index(request: Request) -> Response:
    """The console page."""
    return _serve(request, "index.html")


@router.get(PREFIX + "/{name}")
async def asset(request: Request, name: str) -> Response:
    """A console asset (script, style sheet, icon)."""
    return _serve(request, name)


def is_console_path(path: str) -> bool:
    """True for the console's own paths (the page and its assets)."""
    return path == "/" or path.startswith(PREFIX + "/")


class ConsoleHeadersMiddleware:
    """Adds the CSP and other security headers to console responses only.

    Only there: the docs pages have a policy of their own (`api.docs.CSP`).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; add the headers to the response start of console paths."""
        if scope["type"] != "http" or not is_console_path(scope.get("path", "")):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)
