"""The layering rules of DESIGN.md section 1, pinned.

- importing `safecity` (any module of it) never pulls in a service package;
- service packages never import each other (simulators may use edge);
- only safecity/mqtt.py touches paho.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("edge", "ingest", "api", "simulators", "alerts", "dashboards")
PACKAGES = ("safecity", *SERVICES)
ALLOWED = {"simulators": {"edge"}}
MQTT_BOUNDARY = ROOT / "safecity" / "mqtt.py"


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imported(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, dotted module) of every absolute import, and of import_module("...") calls."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (
                    isinstance(node.func, ast.Name)
                    and node.func.id in ("import_module", "__import__")
                )
            )
        ):
            yield node.lineno, node.args[0].value


def _imports_of(path: Path) -> list[tuple[int, str]]:
    return list(_imported(ast.parse(path.read_text(encoding="utf-8"), str(path))))


def test_the_packages_are_there() -> None:
    assert _sources("safecity")
    assert MQTT_BOUNDARY.is_file()
    assert any(_sources(p) for p in ("ingest", "api"))


def test_importing_safecity_loads_no_service_package() -> None:
    script = f"""
import json, pkgutil, sys
import safecity
names = []
for info in pkgutil.walk_packages(safecity.__path__, "safecity."):
    if info.name == "safecity.__main__":
        continue  # running the CLI is not importing the package
    __import__(info.name)
    names.append(info.name)
services = {list(SERVICES)!r}
loaded = sorted(m for m in sys.modules if m.split(".")[0] in services)
print(json.dumps({{"imported": names, "services": loaded}}))
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT.parent,  # not the repo root: the packages must come from the install
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "safecity.cli" in report["imported"]
    assert "safecity.mqtt" in report["imported"]
    assert "safecity.registry" in report["imported"]
    assert report["services"] == []


@pytest.mark.parametrize("package", SERVICES)
def test_services_do_not_import_each_other(package: str) -> None:
    forbidden = set(SERVICES) - {package} - ALLOWED.get(package, set())
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in _sources(package)
        for line, module in _imports_of(path)
        if module.split(".")[0] in forbidden
    ]
    assert offenders == []


def test_safecity_has_no_import_statement_of_a_service() -> None:
    """The CLI may load a service lazily by name (import_module) inside its command only."""
    offenders = []
    for path in _sources("safecity"):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            modules: list[str] = []
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            offenders += [
                f"{path.relative_to(ROOT)}:{node.lineno}: {m}"
                for m in modules
                if m.split(".")[0] in SERVICES
            ]
    assert offenders == []


def test_only_the_mqtt_boundary_imports_paho() -> None:
    users = sorted(
        {
            str(path.relative_to(ROOT))
            for package in PACKAGES
            for path in _sources(package)
            for _, module in _imports_of(path)
            if module.split(".")[0] == "paho"
        }
    )
    assert users == [str(MQTT_BOUNDARY.relative_to(ROOT))]


def test_the_import_scanner_sees_what_it_should() -> None:
    """Guard the scanner itself: every import form it must recognise."""
    tree = ast.parse(
        "import paho.mqtt.client as paho\n"
        "from ingest import service\n"
        "from . import sibling\n"
        "def f():\n"
        "    import api.app\n"
        "    importlib.import_module('simulators.fleet')\n"
        "    __import__('edge')\n"
    )
    assert sorted(m for _, m in _imported(tree)) == [
        "api.app",
        "edge",
        "ingest",
        "paho.mqtt.client",
        "simulators.fleet",
    ]
