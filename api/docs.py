"""Interactive API docs that work offline: Swagger UI at `/docs`, ReDoc at `/redoc`.

The Swagger UI and ReDoc bundles come installed with the Python dependencies (the
`fastapi-offline` package ships them); they are read once at import into an
allow-list and served from `/docs/assets/`, so the pages load nothing from another
origin. The one CDN address inside ReDoc (its credit logo) is
pointed at the bundled icon, and Swagger UI's online validator is off. The page
start-up scripts are files too, so the pages' CSP needs no inline
script.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from html import escape
from importlib.resources import files

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse

ASSETS_PREFIX = "/docs/assets"
# Same origin only; ReDoc runs its search index in a blob: worker and inlines styles.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
}
# ReDoc's sidebar credit draws a logo from its CDN: point it at the bundled icon instead.
_REDOC_LOGO = (
    b"https://cdn.redoc.ly/redoc/logo-mini.svg",
    ASSETS_PREFIX.encode() + b"/favicon.png",
)
_SWAGGER_INIT = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: document.body.dataset.openapi,
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    displayOperationId: true,
    validatorUrl: null,
    persistAuthorization: false,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  });
});
"""


@dataclass(frozen=True, slots=True)
class Asset:
    """One docs file held in memory with its content type and ETag."""

    body: bytes
    media_type: str
    etag: str


def _asset(body: bytes, suffix: str) -> Asset:
    return Asset(body, _TYPES[suffix], '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


def load_assets() -> dict[str, Asset]:
    """The bundled Swagger UI and ReDoc files plus the Swagger UI start-up script."""
    static = files("fastapi_offline") / "static"
    names = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
    assets = {
        name: _asset(static.joinpath(name).read_bytes(), "." + name.rsplit(".", 1)[1])
        for name in names
    }
    redoc = assets["redoc.standalone.js"].body.replace(*_REDOC_LOGO)
    assets["redoc.standalone.js"] = _asset(redoc, ".js")
    assets["swagger-init.js"] = _asset(_SWAGGER_INIT.encode(), ".js")
    return assets


ASSETS = load_assets()


def _page(title: str, head: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n"
        f'<link rel="icon" href="{ASSETS_PREFIX}/favicon.png">\n{head}</head>\n{body}</html>\n'
    )


def router_for(app: FastAPI) -> APIRouter:
    """The routes of the two docs pages and their assets for `app`'s OpenAPI document."""
    router = APIRouter(include_in_schema=False)
    openapi_url = escape(app.openapi_url or "/openapi.json")

    @router.get("/docs")
    async def swagger_ui() -> HTMLResponse:
        """Swagger UI: try the API with a key."""
        head = f'<link rel="stylesheet" href="{ASSETS_PREFIX}/swagger-ui.css">\n'
        body = (
            f'<body data-openapi="{openapi_url}">\n<div id="swagger-ui"></div>\n'
            f'<script src="{ASSETS_PREFIX}/swagger-ui-bundle.js"></script>\n'
            f'<script src="{ASSETS_PREFIX}/swagger-init.js"></script>\n</body>\n'
        )
        return HTMLResponse(_page(f"{app.title} - Swagger UI", head, body))

    @router.get("/redoc")
    async def redoc() -> HTMLResponse:
        """ReDoc: the reference to read."""
        body = (
            f'<body>\n<redoc spec-url="{openapi_url}"></redoc>\n'
            f'<script src="{ASSETS_PREFIX}/redoc.standalone.js"></script>\n</body>\n'
        )
        return HTMLResponse(_page(f"{app.title} - ReDoc", "", body))

    @router.get(ASSETS_PREFIX + "/{name}")
    async def asset(request: Request, name: str) -> Response:
        """A bundled docs asset (allow-listed by name)."""
        found = ASSETS.get(name)
        if found is None:
            raise HTTPException(status_code=404, detail="not found")
        headers = {"ETag": found.etag, "Cache-Control": "no-cache"}
        if request.headers.get("if-none-match") == found.etag:
            return Response(status_code=304, headers=headers)
        return Response(found.body, media_type=found.media_type, headers=headers)

    return router
