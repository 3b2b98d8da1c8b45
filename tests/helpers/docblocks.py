"""The command blocks of the docs, their `docs-test` directives, and the port mapping.

A fenced block tagged `sh`, `bash` or `python` is a command block. An HTML comment on
the line(s) right before its fence tells the docs test how to treat it:

    <!-- docs-test: skip reason="starts the stack this test runs" -->
    <!-- docs-test: expect="\"aqi\"" -->
    <!-- docs-test: stop-after=5 expect="telemetry" -->

`skip` (with a `reason`) leaves the block out and counts it; `expect` is a regular
expression the block's output must contain; `stop-after=N` stops a block whose last
command runs until Ctrl-C with a Ctrl-C after N seconds, or as soon as its output
matches `expect` (being stopped is then its success);
`timeout=N` gives a slow block more than the default time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

LANGUAGES = {"sh": "sh", "bash": "sh", "console": "sh", "python": "python", "py": "python"}
_FENCE = re.compile(r"^(\s*)```\s*([A-Za-z0-9_+-]*)\s*$")
_DIRECTIVE = re.compile(r"<!--\s*docs-test:(.*?)-->", re.DOTALL)
_PAIR = re.compile(r'([a-z][a-z-]*)(?:=(?:"((?:[^"\\]|\\.)*)"|([^"\s]\S*)))?(?=\s|$)')
KNOWN = {"skip", "reason", "expect", "stop-after", "timeout"}


class DirectiveError(ValueError):
    """A `docs-test` comment that names an unknown option or lacks a value."""


@dataclass(frozen=True)
class Block:
    """One command block: where it is, its language, its text and its directives."""

    doc: Path
    line: int
    language: str
    code: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def skipped(self) -> bool:
        """Marked as not runnable here."""
        return "skip" in self.options

    @property
    def where(self) -> str:
        """`file:line` of the fence."""
        return f"{self.doc}:{self.line}"


def parse_directive(text: str) -> dict[str, str]:
    """The options of one `docs-test:` comment body, e.g. `skip reason="..."`."""
    options: dict[str, str] = {}
    rest = text.strip()
    while rest:
        match = _PAIR.match(rest)
        if match is None:
            raise DirectiveError(f"cannot read docs-test option at {rest[:30]!r}")
        key, quoted, bare = match.groups()
        if key not in KNOWN:
            raise DirectiveError(f"unknown docs-test option {key!r}")
        value = quoted if quoted is not None else bare
        options[key] = "" if value is None else value.replace('\\"', '"')
        rest = rest[match.end() :].lstrip()
    if "skip" in options and not options.get("reason"):
        raise DirectiveError('docs-test: skip needs a reason="..."')
    return options


def _directives_before(lines: list[str], index: int) -> dict[str, str]:
    """The options of the docs-test comment directly above line `index` (blank lines
    between allowed), else {}."""
    j = index - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    if j < 0 or not lines[j].rstrip().endswith("-->"):
        return {}
    end = j
    while j > 0 and "<!--" not in lines[j]:
        j -= 1
    options: dict[str, str] = {}
    for body in _DIRECTIVE.findall("\n".join(lines[j : end + 1])):
        options.update(parse_directive(body))
    return options


def blocks(doc: Path, root: Path) -> list[Block]:
    """Every command block of `doc` (its path shown relative to `root`)."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, tag = match.groups()
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith("```"):
            j += 1
        language = LANGUAGES.get(tag.lower())
        if language is not None:
            code = "\n".join(line.removeprefix(indent) for line in lines[i + 1 : j])
            options = _directives_before(lines, i)
            out.append(Block(doc.relative_to(root), i + 1, language, code + "\n", options))
        i = j + 1
    return out


def doc_files(root: Path) -> list[Path]:
    """The docs a reader follows: README, SECURITY, docs/ and every folder's README
    (drafts, docs/_*.md, and tools' hidden folders aside)."""
    found = [root / "README.md", root / "SECURITY.md", *sorted((root / "docs").glob("[!_]*.md"))]
    return found + sorted(p for p in root.glob("*/README.md") if not p.parent.name.startswith("."))


def all_blocks(root: Path) -> list[Block]:
    """Every command block of every doc, in reading order."""
    return [b for doc in doc_files(root) for b in blocks(doc, root)]


@dataclass(frozen=True)
class Ports:
    """Where the test's stack listens, for the ports the docs name."""

    api: int
    region_api: int
    mqtt: int
    mqtt_tls: int
    influx: int
    ingest_metrics: int
    alerts_metrics: int

    def mapping(self) -> dict[int, int]:
        """Documented port -> this stack's port."""
        return {
            8000: self.api,
            8001: self.region_api,
            1883: self.mqtt,
            8883: self.mqtt_tls,
            8086: self.influx,
            9101: self.ingest_metrics,
            9102: self.alerts_metrics,
        }


_PORT_USE = re.compile(r"((?:127\.0\.0\.1|localhost):|-p\s+|--port[ =]|\bport=)(\d{4,5})\b")


def localise(code: str, ports: Ports, values: dict[str, str]) -> str:
    """The block as it runs here: documented ports replaced by the stack's, placeholders
    (`sck_...`) by real values."""
    mapping = ports.mapping()

    def port(match: re.Match[str]) -> str:
        number = int(match.group(2))
        return match.group(1) + str(mapping.get(number, number))

    code = _PORT_USE.sub(port, code)
    for placeholder, value in values.items():
        code = code.replace(placeholder, value)
    return code
