"""The order in which `pytest -n 2 --dist loadfile` hands out the test files: longest first.

xdist gives a worker a whole file at a time, in collection order (by default it first
sorts the files by their number of tests, which leaves the few long files of one or two
tests for the end: the run then finishes with one worker alone in a long file). Longest
first, the short files fill the gaps at the end and both workers finish together.

What a file takes comes from file_seconds.json, which a measured run writes
(`pytest --record-file-times`: each file's setup, call and teardown seconds summed, the
files it ran replacing their old figures); a file not in it counts PER_TEST seconds a
test. Only the order depends on it, never what runs: a stale figure costs time, nothing
else.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import pytest

ROOT = Path(__file__).resolve().parents[2]
TABLE = Path(__file__).with_name("file_seconds.json")
PER_TEST = 0.5


class Item(Protocol):
    """What the ordering needs of a collected test."""

    @property
    def nodeid(self) -> str:
        """`path::name`, the path relative to the root."""
        ...


def file_of(item: Item) -> str:
    """The test file of an item (xdist's unit of work under --dist loadfile)."""
    return item.nodeid.split("::", 1)[0]


def render(seconds: Mapping[str, float]) -> str:
    """The table as file_seconds.json holds it: longest first, to a tenth of a second."""
    ordered = sorted(seconds.items(), key=lambda kv: (-round(kv[1], 1), kv[0]))
    return json.dumps({name: round(s, 1) for name, s in ordered}, indent=1) + "\n"


def load(path: Path = TABLE) -> dict[str, float]:
    """The measured seconds of each file (none if the table is missing)."""
    if not path.is_file():
        return {}
    table: dict[str, float] = json.loads(path.read_text(encoding="utf-8"))
    return table


SECONDS = load()


def merged(old: Mapping[str, float], measured: Mapping[str, float]) -> dict[str, float]:
    """The table after a run: the files it measured at their new figures, the others kept,
    a file no longer in the tree dropped."""
    return {name: s for name, s in {**old, **measured}.items() if (ROOT / name).is_file()}


class Recorder:
    """A pytest plugin summing the seconds of each file's phases from the run's reports
    (on the controller, under xdist: every worker's reports come to it), written to the
    table when the session ends."""

    def __init__(self, path: Path = TABLE) -> None:
        self.path = path
        self.seconds: defaultdict[str, float] = defaultdict(float)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """One phase (setup, call or teardown) of a test."""
        self.seconds[report.nodeid.split("::", 1)[0]] += report.duration

    def pytest_sessionfinish(self) -> None:
        """The table with this run's figures merged in."""
        self.path.write_text(render(merged(load(self.path), self.seconds)), encoding="utf-8")


def longest_first(items: Sequence[Item], seconds: Mapping[str, float] = SECONDS) -> list[Item]:
    """The items, each file's together and in its own order, the longest files first."""
    counts = Counter(file_of(item) for item in items)
    first_seen = {name: index for index, name in reversed(list(enumerate(map(file_of, items))))}

    def cost(name: str) -> float:
        return seconds.get(name, counts[name] * PER_TEST)

    order = {name: (-cost(name), first_seen[name]) for name in counts}
    return sorted(items, key=lambda item: order[file_of(item)])
