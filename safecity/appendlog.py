"""Incremental reading of an append-only JSON-lines file (a ledger, the dead-letter store)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class AppendedLines:
    """Yields the complete lines appended to a file since the last call.

    A torn last line waits for its newline; a replaced or truncated file starts over
    (`read()` then reports `reset=True`, so the caller drops what it derived before).
    """

    path: Path
    _offset: int = 0
    _inode: int | None = None

    def read(self) -> tuple[bool, list[bytes]]:
        """(reset, new complete lines); a missing file is a reset with no lines."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            reset = self._inode is not None or self._offset > 0
            self._offset, self._inode = 0, None
            return reset, []
        reset = False
        if stat.st_ino != self._inode or stat.st_size < self._offset:
            reset = self._inode is not None or self._offset > 0
            self._offset, self._inode = 0, stat.st_ino
        if stat.st_size == self._offset:
            return reset, []
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read(stat.st_size - self._offset)
        end = data.rfind(b"\n") + 1
        self._offset += end
        return reset, data[:end].splitlines()
