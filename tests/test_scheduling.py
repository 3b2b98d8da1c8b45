"""The order the suite's files go out to the xdist workers (tests/helpers/scheduling.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from scheduling import PER_TEST, ROOT, SECONDS, longest_first


@dataclass(frozen=True)
class Collected:
    nodeid: str


def test_every_timed_file_exists() -> None:
    """A renamed or removed file must leave the table too (its time would be lost)."""
    assert SECONDS, "no measured file: the order is by number of tests only"
    missing = [name for name in SECONDS if not (ROOT / name).is_file()]
    assert missing == []


def test_the_longest_files_go_first_each_file_kept_together_in_its_own_order() -> None:
    timed = max(SECONDS, key=SECONDS.__getitem__)
    many = [Collected(f"tests/x/test_many.py::t{i}") for i in range(int(SECONDS[timed]) + 5)]
    items = [
        Collected("tests/x/test_one.py::a"),
        *many[:2],
        Collected(f"{timed}::first"),
        *many[2:],
        Collected(f"{timed}::second"),
        Collected("tests/x/test_one.py::b"),
    ]
    ordered = [item.nodeid for item in longest_first(items)]
    # More tests than the longest timed file's seconds at PER_TEST each: it still counts less.
    assert len(many) * PER_TEST < SECONDS[timed]
    assert ordered == [
        f"{timed}::first",
        f"{timed}::second",
        *(m.nodeid for m in many),
        "tests/x/test_one.py::a",
        "tests/x/test_one.py::b",
    ]


def test_the_suite_is_collected_longest_first(request: pytest.FixtureRequest) -> None:
    """conftest's hook applies the order to this session's own collection."""
    files = list(dict.fromkeys(item.nodeid.split("::")[0] for item in request.session.items))
    assert files == [
        file
        for file in dict.fromkeys(
            item.nodeid.split("::")[0] for item in longest_first(request.session.items)
        )
    ]
