"""The order the suite's files go out to the xdist workers (tests/helpers/scheduling.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from scheduling import PER_TEST, ROOT, SECONDS, TABLE, Recorder, longest_first, render


@dataclass(frozen=True)
class Collected:
    nodeid: str


def test_every_timed_file_exists() -> None:
    """A renamed or removed file must leave the table too (its time would be lost)."""
    assert SECONDS, "no measured file: the order is by number of tests only"
    missing = [name for name in SECONDS if not (ROOT / name).is_file()]
    assert missing == []


def test_the_table_is_as_a_recorded_run_writes_it() -> None:
    """file_seconds.json is generated (`pytest --record-file-times`), never typed in."""
    assert TABLE.read_text(encoding="utf-8") == render(SECONDS)


@dataclass(frozen=True)
class Report:
    nodeid: str
    duration: float


def test_a_recorded_run_sums_each_file_and_keeps_the_files_it_did_not_run(
    tmp_path: Path,
) -> None:
    table = tmp_path / "file_seconds.json"
    kept, gone = "tests/test_layering.py", "tests/x/test_removed.py"
    table.write_text(render({kept: 3.0, gone: 9.0, "tests/test_docs.py": 1.0}))
    recorder = Recorder(table)
    for nodeid, duration in (
        ("tests/test_docs.py::a", 0.25),
        ("tests/test_docs.py::a", 2.0),
        ("tests/test_docs.py::b", 0.5),
        ("tests/test_scheduling.py::c", 40.04),
    ):
        recorder.pytest_runtest_logreport(Report(nodeid, duration))  # type: ignore[arg-type]
    recorder.pytest_sessionfinish()
    assert table.read_text() == (
        '{\n "tests/test_scheduling.py": 40.0,\n "tests/test_layering.py": 3.0,\n'
        ' "tests/test_docs.py": 2.8\n}\n'
    )


def test_the_longest_files_go_first_each_file_kept_together_in_its_own_order() -> None:
    timed = "tests/x/test_long.py"
    seconds = {timed: 30.0, "tests/x/test_gone.py": 99.0}
    many = [Collected(f"tests/x/test_many.py::t{i}") for i in range(int(seconds[timed]) + 5)]
    items = [
        Collected("tests/x/test_one.py::a"),
        *many[:2],
        Collected(f"{timed}::first"),
        *many[2:],
        Collected(f"{timed}::second"),
        Collected("tests/x/test_one.py::b"),
    ]
    ordered = [item.nodeid for item in longest_first(items, seconds)]
    # More tests than the timed file's seconds at PER_TEST each: it still counts less.
    assert len(many) * PER_TEST < seconds[timed]
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
