"""The whole exception hierarchy is visible in one module: safecity/errors.py."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from safecity import errors

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("safecity", "ingest", "api", "alerts", "edge", "simulators", "dashboards", "broker")


def _subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub, *_subclasses(sub)}
    return out


def test_every_safecity_error_is_defined_in_the_errors_module() -> None:
    for package in (*PACKAGES, "control"):
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, f"{package}."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)
    found = _subclasses(errors.SafecityError)
    assert len(found) >= 20
    elsewhere = sorted(
        f"{c.__module__}.{c.__qualname__}" for c in found if c.__module__ != errors.__name__
    )
    assert elsewhere == []


def test_the_hierarchy_is_shallow() -> None:
    depth = {}
    for cls in _subclasses(errors.SafecityError):
        depth[cls.__name__] = (
            len([b for b in cls.__mro__ if issubclass(b, errors.SafecityError)]) - 1
        )
    assert max(depth.values()) <= 3, depth
