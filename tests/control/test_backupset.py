"""The backup manifest: what `safecity restore` checks before it touches anything."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control.backupset import (
    MANIFEST,
    BackupError,
    BackupFile,
    Manifest,
    check,
    describe,
    write_manifest,
)

KEYS = "instance/apikeys.json"
SHARD = "influxdb/x.s1.tar.gz"


def _backup(root: Path) -> Manifest:
    (root / "instance").mkdir(parents=True)
    (root / "instance" / "apikeys.json").write_text('{"keys": []}\n')
    (root / "influxdb").mkdir()
    (root / "influxdb" / "x.s1.tar.gz").write_bytes(bytes(range(256)) * 8)
    files = tuple(describe(root, p) for p in sorted(root.rglob("*")) if p.is_file())
    manifest = Manifest(
        started_at="2026-01-01T00:00:00.000Z",
        finished_at="2026-01-01T00:00:01.000Z",
        recovery_point="2026-01-01T00:00:00.000Z",
        source="/somewhere",
        files=files,
    )
    write_manifest(root, manifest)
    return manifest


def test_an_intact_backup_checks_out(tmp_path: Path) -> None:
    written = _backup(tmp_path)
    assert check(tmp_path) == written
    assert written.total_bytes() == sum(f.size for f in written.files)


@pytest.mark.parametrize(
    ("damage", "named", "why"),
    [
        (lambda r: (r / KEYS).write_text('{"keys": [1]}\n'), "apikeys.json", "bytes"),
        (lambda r: (r / KEYS).write_text('{"keys": []}\r'), "apikeys.json", "sha256"),
        (lambda r: (r / SHARD).write_bytes(b"\0" * 100), "x.s1.tar.gz", "truncated"),
        (lambda r: (r / SHARD).unlink(), "x.s1.tar.gz", "missing"),
        (lambda r: (r / "instance/extra").write_text("x"), "extra", "not in the manifest"),
        (lambda r: (r / MANIFEST).write_text("{"), MANIFEST, "damaged"),
        (lambda r: (r / MANIFEST).unlink(), MANIFEST, "not a backup"),
    ],
)  # fmt: skip
def test_a_damaged_backup_is_refused_naming_the_file(
    tmp_path: Path, damage: object, named: str, why: str
) -> None:
    _backup(tmp_path)
    damage(tmp_path)  # type: ignore[operator]
    with pytest.raises(BackupError, match=why) as refused:
        check(tmp_path)
    assert named in str(refused.value)


def test_a_path_outside_the_backup_is_refused(tmp_path: Path) -> None:
    manifest = _backup(tmp_path)
    outside = BackupFile(path="../escape", size=0, sha256="0" * 64, mode=0o600)
    write_manifest(tmp_path, manifest.model_copy(update={"files": (*manifest.files, outside)}))
    with pytest.raises(BackupError, match="outside the backup"):
        check(tmp_path)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_as_a_manifest_are_refused_never_a_crash(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / MANIFEST).write_bytes(data)
        with pytest.raises(BackupError, match=MANIFEST):
            check(Path(tmp))
