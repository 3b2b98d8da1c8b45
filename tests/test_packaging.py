"""The licence as users receive it, and the hashed locks every install reads.

`requirements-dev.lock` (runtime + test + lint) is what scripts/setup.sh installs for
`make run`, `make test` and CI; `requirements.lock` (runtime) is what the Dockerfile
installs. Both are written by `make lock` (uv); these tests fail when pyproject.toml and
a lock disagree. That a new virtualenv installed from `requirements.lock` gets exactly its
versions is shown where it is done, in the image (tests/test_compose_podman.py).
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from locks import Pin, applicable, read_lock
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def disagreements(requirements: list[str], pins: list[Pin]) -> list[str]:
    """Each requirement of pyproject.toml that the pins miss or pin outside its range."""
    found = []
    for line in requirements:
        req = Requirement(line)
        if req.marker and not req.marker.evaluate():
            continue
        versions = [p.version for p in pins if p.name == canonicalize_name(req.name)]
        if not versions:
            found.append(f"{req.name}: not in the lock")
        for version in versions:
            if not req.specifier.contains(Version(version), prereleases=True):
                found.append(f"{req.name}: locked {version}, pyproject.toml wants {req.specifier}")
    return found


def runtime_requirements(project: dict[str, object]) -> list[str]:
    deps = project["dependencies"]
    assert isinstance(deps, list)
    return [str(d) for d in deps]


def dev_requirements(project: dict[str, object]) -> list[str]:
    extras = project["optional-dependencies"]
    assert isinstance(extras, dict)
    return [*runtime_requirements(project), *extras["dev"]]


def test_the_licence_is_given_to_users_and_declared_in_spdx() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    # PEP 639 metadata needs setuptools 77: an older backend must not be accepted.
    (setuptools,) = (
        Requirement(r) for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools")
    )
    assert not setuptools.specifier.contains("76.1") and setuptools.specifier.contains("77.0")
    # The installed project's metadata, as pip and SBOM tools read it.
    meta = importlib.metadata.metadata("safecity")
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]


@pytest.mark.parametrize(
    ("lock", "requirements"),
    [(LOCK, runtime_requirements), (DEV_LOCK, dev_requirements)],
    ids=["runtime", "dev"],
)
def test_every_requirement_of_pyproject_is_locked_within_its_range(
    lock: Path, requirements: object
) -> None:
    assert callable(requirements)
    problems = disagreements(requirements(PYPROJECT["project"]), read_lock(lock))
    assert not problems, f"{lock.name} disagrees with pyproject.toml (run `make lock`): {problems}"


def test_a_range_the_lock_misses_is_reported() -> None:
    """Guard the check itself: a raised floor or a new dependency is caught."""
    pins = read_lock(LOCK)
    pydantic = next(p for p in pins if p.name == "pydantic")
    changed = [f"pydantic>{pydantic.version}", "a-package-nobody-locked>=1"]
    assert disagreements(changed, pins) == [
        f"pydantic: locked {pydantic.version}, pyproject.toml wants >{pydantic.version}",
        "a-package-nobody-locked: not in the lock",
    ]


def test_every_pin_is_hashed_and_the_image_runs_what_the_tests_ran() -> None:
    runtime, dev = read_lock(LOCK), read_lock(DEV_LOCK)
    for pin in [*runtime, *dev]:
        assert pin.hashes and all(h.startswith("sha256:") for h in pin.hashes), pin
    tested = {(p.name, p.version, p.marker) for p in dev}
    assert {(p.name, p.version, p.marker) for p in runtime} <= tested
    # Both locks are written by the one documented command, from pyproject.toml.
    makefile = (ROOT / "Makefile").read_text()
    assert "uv pip compile pyproject.toml --extra dev" in makefile
    assert "-o requirements-dev.lock" in makefile and "-o requirements.lock" in makefile


def test_this_virtualenv_holds_the_locked_versions() -> None:
    """scripts/setup.sh installed the dev lock: every pin is here, at its version."""
    installed = {
        canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()
    }
    wrong = {
        name: (version, installed.get(name))
        for name, version in applicable(DEV_LOCK).items()
        if installed.get(name) != version
    }
    assert not wrong, f"locked vs installed (run scripts/setup.sh --test): {wrong}"
