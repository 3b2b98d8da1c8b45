"""The console's files: public, small, self-contained, and served with a strict CSP."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.routes.console import CONSOLE_DIR
from api.settings import ApiSettings
from control.stack import Influxd
from safecity.settings import InfluxSettings

BUDGET_BYTES = 300_000
# The only absolute URL allowed in the assets: the SVG namespace (an identifier, never fetched).
SVG_NS = "http://www.w3.org/2000/svg"


@pytest.fixture
def client(influxd: Influxd, tmp_path: Path) -> Iterator[TestClient]:
    """The API app in-process, against the session's real InfluxDB."""
    settings = ApiSettings(
        api_keys_file=tmp_path / "apikeys.json",
        influx=InfluxSettings(url=influxd.url, database="console_assets"),
        deadletter_dir=tmp_path / "deadletter",
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def referenced(html: str) -> list[str]:
    """The asset paths the page and its modules refer to."""
    return re.findall(r'(?:src|href)="(/console/[^"]+)"', html)


def test_page_and_assets_need_no_key_and_fit_the_budget(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    paths = referenced(page.text)
    assert {"/console/console.js", "/console/console.css", "/console/favicon.svg"} <= set(paths)
    files = sorted(p.name for p in CONSOLE_DIR.iterdir() if p.is_file())
    total = len(page.content)
    for name in files:
        if name == "index.html":
            continue
        response = client.get(f"/console/{name}")
        assert response.status_code == 200, name
        assert response.content == (CONSOLE_DIR / name).read_bytes()
        total += len(response.content)
    # Everything the console can ever load, summed as served.
    assert total == sum((CONSOLE_DIR / n).stat().st_size for n in files)
    assert total < BUDGET_BYTES, f"console assets are {total} bytes"


def test_javascript_modules_import_only_served_files(client: TestClient) -> None:
    served = {p.name for p in CONSOLE_DIR.iterdir() if p.is_file()}
    for script in CONSOLE_DIR.glob("*.js"):
        for target in re.findall(r'from "\./([^"]+)"', script.read_text()):
            assert target in served, f"{script.name} imports missing {target}"
            assert (
                client.get(f"/console/{target}")
                .headers["content-type"]
                .startswith("text/javascript")
            )


def test_assets_reference_nothing_outside_the_app() -> None:
    for path in CONSOLE_DIR.iterdir():
        text = path.read_text().replace(SVG_NS, "")
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text), path.name
        assert "@import" not in text and "url(" not in text, path.name


def test_console_responses_carry_the_security_headers(client: TestClient) -> None:
    for path in ("/", "/console/console.js", "/console/missing.js"):
        headers = client.get(path).headers
        csp = headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
    # The docs pages have their own same-origin policy (framing refused there too).
    docs_csp = client.get("/docs").headers["content-security-policy"]
    assert "default-src 'self'" in docs_csp and "frame-ancestors 'none'" in docs_csp


def test_only_listed_files_are_served_and_data_still_needs_a_key(client: TestClient) -> None:
    assert client.get("/console/missing.js").status_code == 404
    assert client.get("/console/..%2Fapp.py").status_code == 404
    assert client.get("/console/../routes/console.py").status_code == 404
    etag = client.get("/console/console.css").headers["etag"]
    assert client.get("/console/console.css", headers={"If-None-Match": etag}).status_code == 304
    assert client.get("/v1/cities").status_code == 401
    assert client.get("/v1/stream").status_code == 401
    # The console is not part of the published API.
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/console") for p in paths)
