"""The console tests' browser."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from chromium import chromium_context
from playwright.sync_api import BrowserContext

TIMEOUT_MS = 30_000


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    """Headless Debian Chromium with a fresh profile."""
    with chromium_context(
        tmp_path / "profile", width=1400, height=950, timeout_ms=TIMEOUT_MS
    ) as context:
        yield context
