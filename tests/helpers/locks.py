"""The hashed locks (requirements*.lock, written by `make lock`) as the tests read them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name


@dataclass(frozen=True)
class Pin:
    """One locked requirement: `name==version ; marker` and its hashes."""

    name: str
    version: str
    marker: str
    hashes: tuple[str, ...]

    def applies(self) -> bool:
        """Whether this Python on this platform installs the pin."""
        return not self.marker or Marker(self.marker).evaluate()


def read_lock(path: Path) -> list[Pin]:
    """The pins of a lock in uv's (and pip-compile's) requirements format."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pins = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        spec, *hashes = (part.strip() for part in line.split("--hash="))
        requirement, _, marker = spec.partition(";")
        name, _, version = requirement.strip().partition("==")
        assert version, f"{path.name}: not pinned: {line[:80]}"
        pins.append(Pin(canonicalize_name(name), version.strip(), marker.strip(), tuple(hashes)))
    return pins


def applicable(path: Path) -> dict[str, str]:
    """{name: version} of the pins this interpreter installs from PATH."""
    return {p.name: p.version for p in read_lock(path) if p.applies()}
