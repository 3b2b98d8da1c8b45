"""The layering rules of the README's "The folders", pinned.

- the contract package `safecity` imports no service or control module, by any means;
- service packages never import each other (simulators may use edge), nor the control package;
- nothing imports the control package (it is the top floor);
- only safecity/mqtt/ touches paho;
- no package holds more than a quarter of the Python lines, no module more than ~500.
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
SERVICES = (
    "edge",
    "ingest",
    "api",
    "simulators",
    "alerts",
    "dashboards",
    "broker",
    "notify",
    "rollups",
)
CONTROL = "control"
PACKAGES = ("safecity", *SERVICES, CONTROL)
ALLOWED = {"simulators": {"edge"}}
MQTT_BOUNDARY = ROOT / "safecity" / "mqtt"
MAX_MODULE_LINES = 520
MAX_PACKAGE_SHARE = 0.25


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
            # `from safecity import cli` names a module, too
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"
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


def _offenders(package: str, forbidden: set[str]) -> list[str]:
    return sorted(
        {
            f"{path.relative_to(ROOT)}:{line}: {module}"
            for path in _sources(package)
            for line, module in _imports_of(path)
            if module.split(".")[0] in forbidden
        }
    )


def test_the_packages_are_there() -> None:
    for package in PACKAGES:
        assert (ROOT / package / "__init__.py").is_file(), package
    assert (MQTT_BOUNDARY / "__init__.py").is_file()


def test_importing_safecity_loads_no_service_or_control_module(tmp_path: Path) -> None:
    script = f"""
import json, pkgutil, sys
import safecity
names = []
for info in pkgutil.walk_packages(safecity.__path__, "safecity."):
    __import__(info.name)
    names.append(info.name)
above = {[*SERVICES, CONTROL]!r}
loaded = sorted(m for m in sys.modules if m.split(".")[0] in above)
print(json.dumps({{"imported": names, "above": loaded}}))
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        # Not the checkout nor its parent: the packages must come from the install (a
        # clone is usually named `safecity`, which from its parent is a namespace package).
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "safecity.mqtt" in report["imported"]
    assert "safecity.registry" in report["imported"]
    assert report["above"] == []


def test_the_contract_names_no_service_or_control_module() -> None:
    """No exemption: not even a lazy import_module inside a function."""
    assert _offenders("safecity", {*SERVICES, CONTROL}) == []


@pytest.mark.parametrize("package", SERVICES)
def test_services_do_not_import_each_other_nor_the_control_package(package: str) -> None:
    forbidden = {*SERVICES, CONTROL} - {package} - ALLOWED.get(package, set())
    assert _offenders(package, forbidden) == []


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
    assert users
    assert all(Path(u).is_relative_to(MQTT_BOUNDARY.relative_to(ROOT)) for u in users), users


def _code_lines(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def test_no_package_holds_more_than_a_quarter_of_the_code() -> None:
    sizes = {p: sum(_code_lines(f) for f in _sources(p)) for p in PACKAGES}
    total = sum(sizes.values())
    too_big = {p: f"{n / total:.0%}" for p, n in sizes.items() if n > MAX_PACKAGE_SHARE * total}
    assert too_big == {}


def test_no_module_is_over_500_lines() -> None:
    long = sorted(
        f"{path.relative_to(ROOT)}: {n}"
        for package in PACKAGES
        for path in _sources(package)
        if (n := _code_lines(path)) > MAX_MODULE_LINES
    )
    assert long == []


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
        "ingest.service",
        "paho.mqtt.client",
        "simulators.fleet",
    ]


def test_the_line_counter_skips_blank_lines(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("a = 1\n\n   \nb = 2\n", encoding="utf-8")
    assert _code_lines(module) == 2
