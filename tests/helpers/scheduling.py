"""The order in which `pytest -n 2 --dist loadfile` hands out the test files: longest first.

xdist gives a worker a whole file at a time, in collection order (by default it first
sorts the files by their number of tests, which leaves the few long files of one or two
tests for the end: the run then finishes with one worker alone in a long file). Longest
first, the short files fill the gaps at the end and both workers finish together.

SECONDS is about what a file takes on a quiet machine (its tests, set-up and tear-down:
the sums of a `--durations=0` run, scaled to a quiet machine); a file not listed counts
PER_TEST seconds a test. Only the order depends on it, never what runs: a stale figure
costs time, nothing else.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

ROOT = Path(__file__).resolve().parents[2]
PER_TEST = 0.5
SECONDS: dict[str, float] = {
    "tests/test_compose_podman.py": 250,  # builds the images (cold on a fresh machine)
    "tests/control/test_lifecycle.py": 162,
    "tests/control/test_runner.py": 134,
    "tests/control/test_multicity_run.py": 108,
    "tests/control/test_backup.py": 105,
    "tests/ingest/test_faults.py": 100,
    "tests/deploy/test_kubernetes.py": 94,
    "tests/test_docs_run.py": 70,
    "tests/alerts/test_scoring.py": 51,
    "tests/federation/test_federation.py": 50,
    "tests/console/test_console_browser.py": 46,
    "tests/ingest/test_broker_crash.py": 46,
    "tests/api/test_api_schemathesis.py": 40,
    "tests/api/test_api_commands.py": 38,
    "tests/simulators/test_sim_shapes.py": 35,
    "tests/console/test_console_signin.py": 35,
    "tests/test_compose_region.py": 31,
    "tests/ingest/test_identity.py": 30,
    "tests/test_compose.py": 30,
    "tests/ingest/test_security_events.py": 30,
    "tests/ingest/test_poison.py": 29,
    "tests/ingest/test_reconnect_storm.py": 25,
    "tests/dashboards/test_queries.py": 24,
    "tests/api/test_api_live.py": 24,
    "tests/console/test_docs_browser.py": 23,
    "tests/ingest/test_ingest_stats.py": 23,
    "tests/simulators/test_sim_generators.py": 22,
    "tests/ingest/test_service.py": 22,
    "tests/api/test_api_contract.py": 22,
    "tests/control/test_instance.py": 22,
    "tests/console/test_console_multicity.py": 17,
    "tests/alerts/test_service.py": 17,
    "tests/console/test_console_layout.py": 16,
    "tests/ingest/test_deadletter_bounds.py": 15,
}


class Item(Protocol):
    """What the ordering needs of a collected test."""

    @property
    def nodeid(self) -> str:
        """`path::name`, the path relative to the root."""
        ...


def file_of(item: Item) -> str:
    """The test file of an item (xdist's unit of work under --dist loadfile)."""
    return item.nodeid.split("::", 1)[0]


def longest_first(items: Sequence[Item]) -> list[Item]:
    """The items, each file's together and in its own order, the longest files first."""
    counts = Counter(file_of(item) for item in items)
    first_seen = {name: index for index, name in reversed(list(enumerate(map(file_of, items))))}

    def cost(name: str) -> float:
        return SECONDS.get(name, counts[name] * PER_TEST)

    order = {name: (-cost(name), first_seen[name]) for name in counts}
    return sorted(items, key=lambda item: order[file_of(item)])
