"""A backup on disk: a directory of files and `manifest.json`, which lists each with its size
and sha256, and states the recovery point.

`safecity backup` writes one (`control/backup.py`); `safecity restore` reads one only after
`check` found every listed file whole and unchanged and nothing else beside them
(`control/restore.py`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from safecity.errors import BackupError

__all__ = [
    "FILES_DIR",
    "FORMAT",
    "INFLUX_DIR",
    "MANIFEST",
    "BackupError",
    "BackupFile",
    "Manifest",
    "check",
    "describe",
    "digest",
    "manifest_summary",
    "read_manifest",
    "write_manifest",
]

MANIFEST = "manifest.json"
FORMAT = "safecity-backup/1"
INFLUX_DIR = "influxdb"
"""Where in a backup InfluxDB's portable backup of every database lies."""
FILES_DIR = "instance"
"""Where in a backup the instance's own files lie (paths as below SAFECITY_HOME)."""


class BackupFile(BaseModel):
    """One file of a backup: its path in the backup, size, sha256 and mode."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(description="Relative to the backup directory (POSIX separators).")
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    mode: int = Field(ge=0, le=0o777, description="Permission bits to restore (0600 secrets).")


class Manifest(BaseModel):
    """What a backup holds, and up to when."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: str = FORMAT
    started_at: str = Field(description="When the backup began (RFC 3339 UTC).")
    finished_at: str = Field(description="When the last file was written.")
    recovery_point: str = Field(
        description="Every reading a device had sent and the broker acknowledged before "
        "this time is in the backup (in InfluxDB's backup, the ingest spool, the dead "
        "letters, or a device outbox that re-sends it after the restore)."
    )
    source: str = Field(description="The instance directory the backup was taken from.")
    cities: tuple[str, ...] = ()
    databases: tuple[str, ...] = Field(default=(), description="InfluxDB databases backed up.")
    ledger_bytes: int = Field(
        default=0, ge=0, description="The simulator ledger's whole lines up to the recovery point."
    )
    files: tuple[BackupFile, ...] = ()

    def total_bytes(self) -> int:
        """The size of every listed file together."""
        return sum(f.size for f in self.files)


def digest(path: Path) -> str:
    """The sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def describe(root: Path, path: Path) -> BackupFile:
    """The manifest entry of a file written into the backup `root`."""
    stat = path.stat()
    return BackupFile(
        path=path.relative_to(root).as_posix(),
        size=stat.st_size,
        sha256=digest(path),
        mode=stat.st_mode & 0o777,
    )


def write_manifest(root: Path, manifest: Manifest) -> Path:
    """Write `manifest.json` last (atomically): a backup without one is not a backup."""
    path = root / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(manifest.model_dump_json(indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_manifest(root: Path) -> Manifest:
    """The manifest of the backup `root`; BackupError naming it when absent or damaged."""
    path = root / MANIFEST
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise BackupError(f"{path}: not a backup ({exc.strerror or exc})") from exc
    except (ValidationError, ValueError) as exc:
        first = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        raise BackupError(f"{path}: damaged or truncated manifest ({first})") from exc


def check(root: Path) -> Manifest:
    """The manifest, once every listed file is present, of its size and checksum, and no
    other file is beside them; BackupError naming the first file that is not."""
    manifest = read_manifest(root)
    if manifest.format != FORMAT:
        raise BackupError(f"{root / MANIFEST}: format {manifest.format!r}, expected {FORMAT!r}")
    listed = {f.path for f in manifest.files}
    for entry in manifest.files:
        path = root / entry.path
        if ".." in Path(entry.path).parts or Path(entry.path).is_absolute():
            raise BackupError(f"{root / MANIFEST}: a path outside the backup: {entry.path!r}")
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise BackupError(f"{path}: missing from the backup ({exc.strerror})") from exc
        if size != entry.size:
            raise BackupError(
                f"{path}: {size} bytes, the manifest says {entry.size} (truncated or altered)"
            )
        if digest(path) != entry.sha256:
            raise BackupError(f"{path}: sha256 differs from the manifest (altered)")
    extra = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.name != MANIFEST and p.relative_to(root).as_posix() not in listed
    )
    if extra:
        raise BackupError(f"{root / extra[0]}: not in the manifest (added after the backup)")
    return manifest


def manifest_summary(manifest: Manifest) -> str:
    """One line about a backup, for the command's output."""
    return json.dumps(
        {
            "recovery_point": manifest.recovery_point,
            "files": len(manifest.files),
            "bytes": manifest.total_bytes(),
            "databases": list(manifest.databases),
        }
    )
