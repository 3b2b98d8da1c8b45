"""`.dockerignore`: `docker build .` sends no local secrets, state or caches, yet everything
the Dockerfile copies."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax (moby patternmatcher): `**` any depth, `*`/`?` within a level."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif c == "*":
            out, i = out + "[^/]*", i + 1
        elif c == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(c), i + 1
    return re.compile(out + "$")


def _rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").lstrip("/"))
        rules.append((keep, _regex(pattern)))
    return rules


RULES = _rules()


def excluded(path: str) -> bool:
    """Whether docker leaves `path` (relative, `/`-separated) out of the build context.

    As docker does: the path or any parent directory matching counts; the last matching
    pattern wins (`!` puts a path back).
    """
    parts = path.split("/")
    verdict = False
    for keep, regex in RULES:
        if any(regex.match("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            verdict = not keep
    return verdict


def test_matcher_follows_docker_semantics() -> None:
    assert excluded(".git/config") and excluded("safecity/__pycache__/x.cpython-311.pyc")
    assert not excluded(".env.example") and excluded(".env") and excluded(".env.local")
    assert not excluded("safecity/registry.py")


def test_local_state_secrets_and_caches_stay_out() -> None:
    for path in (
        ".git/config",
        ".git/objects/ab/cdef",
        ".venv/bin/python",
        ".venv/lib/python3.11/site-packages/x.py",
        "var/identity/secrets.json",
        "var/identity/credentials.json",
        "var/identity/admin.json",
        "var/identity/dynamic-security.json",
        "var/apikeys.json",
        "var/stack/mosquitto/mosquitto.db",
        "var/certs/ca.key",
        "var/spool/ingest-0/points.lp",
        ".ci/run/log.txt",
        ".env",
        "deploy/secrets/secrets.json",
        "certs/server.key",
        "tmp/identity/mosquitto.passwd",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/0.1/x",
        ".pytest_cache/v/cache/nodeids",
        ".hypothesis/examples/x",
        ".schemathesis/x",
        "api/__pycache__/app.cpython-311.pyc",
        "safecity.egg-info/PKG-INFO",
        "build/lib/safecity/x.py",
        "dist/safecity-0.1.0.whl",
        "ingest.log",
    ):
        assert excluded(path), path


def _dockerfile_sources() -> list[str]:
    sources = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += [w.rstrip("/") for w in words[1:-1] if not w.startswith("--")]
    return sources


def test_everything_the_dockerfile_copies_is_sent() -> None:
    sources = _dockerfile_sources()
    assert "pyproject.toml" in sources and "safecity" in sources
    for source in sources:
        assert not excluded(source), source
        base = ROOT / source
        files = [base] if base.is_file() else [p for p in base.rglob("*.py")]
        for path in files:
            rel = path.relative_to(ROOT).as_posix()
            assert "__pycache__" in rel or not excluded(rel), rel
    # The package data (the built-in city registry) goes in too.
    for data in (ROOT / "safecity" / "data").glob("*.jsonl"):
        assert not excluded(data.relative_to(ROOT).as_posix())


def test_no_file_of_this_checkout_that_holds_a_secret_would_be_sent() -> None:
    """Walk the real tree (skipping what is excluded whole): nothing secret-looking is sent."""
    secretish = re.compile(
        r"(^|/)(secrets\.json|credentials\.json|admin\.json|apikeys\.json|"
        r"dynamic-security\.json|mosquitto\.passwd|\.env)$|\.(key|pem)$"
    )
    sent = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = Path(dirpath).relative_to(ROOT).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = [d for d in dirnames if not excluded(prefix + d)]
        sent += [prefix + f for f in filenames if not excluded(prefix + f)]
    assert sent, "nothing would be sent at all"
    assert [p for p in sent if secretish.search(p)] == []
    assert not any(p.startswith(("var/", ".git/", ".venv/")) for p in sent)
