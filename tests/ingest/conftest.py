"""Fixtures for ingest fault tests: own broker/InfluxDB per test, ingest as a real child process."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from faults import Ingest

from control.stack import LocalStack


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[LocalStack]:
    """A broker and an InfluxDB of this test alone (it may kill, pause or restart them)."""
    with LocalStack(tmp_path / "stack") as started:
        yield started


@pytest.fixture
def ingest_factory(tmp_path: Path) -> Iterator[Callable[..., Ingest]]:
    """Factory of Ingest workers (not started); all are stopped at the end."""
    made: list[Ingest] = []

    def make(stack: LocalStack, db: str, worker: str | None = None, **env: str) -> Ingest:
        ingest = Ingest(stack, db, tmp_path, worker or f"w-{secrets.token_hex(3)}", **env)
        made.append(ingest)
        return ingest

    yield make
    for ingest in made:
        ingest.stop()
