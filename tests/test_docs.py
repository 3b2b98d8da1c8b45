"""Docs beside the code stay true: generated tables and .env.example, links, a short README,
no tracker talk."""

from __future__ import annotations

import re
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from control import envexample
from dashboards import build
from safecity import commands, incidents, ngsild_models, schema

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SCHEMA_DOC = ROOT / "docs" / "schema.md"

# Every table generated from code, and the one doc that carries it.
GENERATED: dict[str, tuple[Path, Callable[[], str]]] = {
    "measurements": (SCHEMA_DOC, schema.markdown_table),
    "security_events": (SCHEMA_DOC, schema.security_events_markdown),
    "retention": (SCHEMA_DOC, schema.retention_markdown_table),
    "ingest_stats": (SCHEMA_DOC, build.ingest_stats_markdown),
    "incidents": (SCHEMA_DOC, incidents.markdown_table),
    "ngsi_ld": (ROOT / "docs" / "ngsi-ld.md", ngsild_models.markdown_table),
    "commands": (ROOT / "docs" / "commands.md", commands.markdown_table),
}

# Mentions of the project's tracker or plan: docs and code speak of the project itself.
TRACKER_TALK = re.compile(
    r"\bissues?\s*#?\d+"
    r"|\bphase[\s-]*\d+"
    r"|\b(?:later|next|earlier|previous|future|this|that)\s+(?:phase|issue)s?\b"
    r"|\b(?:alerts|api|ingest|broker|simulator|dashboards|console)\s+issue\b",
    re.IGNORECASE,
)
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\s]+)`")
TREE = re.compile(
    r"(?:safecity|control|broker|ingest|alerts|api|edge|simulators|dashboards|tests|benchmarks"
    r"|scripts|docs)/"
)


def tracked_files() -> list[Path]:
    """Every file git tracks in this checkout."""
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
    ).stdout.decode()
    return [ROOT / name for name in out.split("\0") if name]


def markdown_docs() -> list[Path]:
    """The docs a reader follows: README, SECURITY, docs/ and every folder's README
    (drafts for other folders' READMEs, docs/_*.md, are merged elsewhere)."""
    docs = [README, ROOT / "SECURITY.md", *sorted((ROOT / "docs").glob("[!_]*.md"))]
    # Hidden folders are tools' (pytest's cache writes a README.md of its own).
    return docs + sorted(p for p in ROOT.glob("*/README.md") if not p.parent.name.startswith("."))


def test_readme_starts_with_the_two_commands() -> None:
    head = "\n".join(README.read_text(encoding="utf-8").splitlines()[:10])
    assert "make run" in head and "make test" in head


def test_readme_is_a_first_hour_read() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines: move detail to docs/"


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_generated_table_is_in_its_doc(name: str) -> None:
    doc, generate = GENERATED[name]
    table = generate()
    assert table.strip(), name
    assert table in doc.read_text(encoding="utf-8"), (
        f"{doc.relative_to(ROOT)} is stale: paste the output of {generate.__module__}."
        f"{generate.__name__}() in place of its table"
    )


def test_readme_has_the_folder_table_and_every_dependency() -> None:
    text = README.read_text(encoding="utf-8")
    for folder in ("safecity", "control", "broker", "ingest", "alerts", "api", "edge"):
        assert f"| [`{folder}/`]" in text, folder
    for folder in ("simulators", "dashboards", "docs", "tests", "benchmarks"):
        assert f"| [`{folder}/`]" in text, folder
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    specs = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    deps = [re.split(r"[<>=!~\[ ;]", spec, maxsplit=1)[0] for spec in specs]
    table = text[text.index("## Dependencies") :].lower()
    missing = [d for d in deps if d.lower().split("-")[0] not in table]
    assert missing == []


@pytest.mark.parametrize("doc", markdown_docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert broken == []


def _missing_code_references(line: str) -> list[str]:
    """`path/in/the/tree.py` and `tests/x.py::test_name` (or `::test_name` after a file on
    the same line) that do not exist. Topics and placeholders (`<id>`, `{city}`) aside."""
    missing, last = [], None
    for ref in CODE.findall(line):
        if ref.startswith("::"):
            if last is not None and f"def {ref[2:].split('[')[0]}(" not in last.read_text():
                missing.append(f"{last.relative_to(ROOT)}{ref}")
            continue
        if not TREE.match(ref) or ref.startswith("safecity/v1") or re.search(r"[<{*$]", ref):
            continue
        path, _, test = ref.partition("::")
        target = ROOT / path
        if not target.exists():
            missing.append(ref)
            last = None
            continue
        last = target if target.is_file() else last
        if test and f"def {test.split('[')[0]}(" not in target.read_text():
            missing.append(ref)
    return missing


@pytest.mark.parametrize(
    "doc",
    [*markdown_docs(), *sorted((ROOT / "docs").glob("_*.md"))],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_files_and_tests_the_docs_name_exist(doc: Path) -> None:
    missing = [
        f"{number}: {ref}"
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1)
        for ref in _missing_code_references(line)
    ]
    assert missing == []


def test_the_reference_check_sees_a_renamed_test() -> None:
    good = "`tests/test_docs.py::test_readme_is_a_first_hour_read`, `::test_no_such_test`"
    assert _missing_code_references(good) == ["tests/test_docs.py::test_no_such_test"]
    assert _missing_code_references("`safecity/no_such_module.py`") == [
        "safecity/no_such_module.py"
    ]
    assert _missing_code_references("`safecity/v1/{city}/_alerts/{severity}`") == []


def test_no_issue_numbers_or_phases_in_tracked_files() -> None:
    this = Path(__file__).resolve()
    hits = []
    for path in tracked_files():
        if path == this or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
        for number, line in enumerate(text.splitlines(), 1):
            if TRACKER_TALK.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert hits == []


def test_the_tracker_pattern_catches_what_it_should() -> None:
    for bad in ("see issue 8", "Issue #12", "Phase 2 (done)", "phase-3", "a later phase"):
        assert TRACKER_TALK.search(bad), bad
    for good in ("the phase of a sine", "a public issue", "issue new secrets"):
        assert not TRACKER_TALK.search(good), good


def test_env_example_is_generated_from_every_settings_class() -> None:
    committed = (ROOT / ".env.example").read_text(encoding="utf-8")
    assert committed == envexample.render(), "stale: python -m control.envexample --write"


def test_every_setting_is_described_on_its_field() -> None:
    found = envexample.variables()
    undescribed = sorted(name for name, var in found.items() if not var.info.description)
    assert undescribed == [], "give each field a Field(description=...)"


def test_a_variable_shared_by_services_has_one_default() -> None:
    assert envexample.conflicting_defaults() == {}


def test_env_example_check_mode_catches_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / ".env.example"
    stale.write_text(envexample.render().replace("SAFECITY_LOG_LEVEL=INFO", ""), encoding="utf-8")
    assert envexample.main(["--check", "--output", str(stale)]) == 1
    assert envexample.main(["--write", "--output", str(stale)]) == 0
    assert envexample.main(["--check", "--output", str(stale)]) == 0
