"""`make bench`: run every `benchmarks/*.py` module that exposes `main()`, in name order.

The soak (an hour) has its own target, `make soak`; `sizing` only renders documents from
the costs the `costs` benchmark measured, and runs after it."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

SEPARATE = {"soak"}  # its own make target


def main() -> None:
    """Import each benchmark module and call its main()."""
    here = Path(__file__).resolve().parent
    for info in sorted(pkgutil.iter_modules([str(here)]), key=lambda m: m.name):
        if info.name.startswith("_") or info.name in SEPARATE:
            continue
        module = importlib.import_module(f"benchmarks.{info.name}")
        entry = getattr(module, "main", None)
        if callable(entry):
            print(f"\n=== benchmarks/{info.name}.py ===", flush=True)
            entry()


if __name__ == "__main__":
    main()
