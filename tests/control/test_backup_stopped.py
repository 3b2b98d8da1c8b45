"""Backup of a stopped instance and restore over an existing one, through the command line:
the instance's own influxd is started for the job, permissions come back, `--force`
replaces a stopped instance and a running one is never touched."""

from __future__ import annotations

import json
import os
from pathlib import Path

from localrun import safecity

from control.backupset import FILES_DIR, MANIFEST
from safecity import instance


def _instance(home: Path) -> None:
    """A stopped instance with a few parts (a real influxd on its data comes later)."""
    where = instance.layout(home)
    where.identity_dir.mkdir(parents=True)
    where.secrets_file.write_text('{"dev-1": "s3cret"}\n')
    os.chmod(where.secrets_file, 0o600)
    where.api_keys_file.write_text('{"keys": []}\n')
    where.deadletter_dir.mkdir()
    (where.deadletter_dir / "deadletters.jsonl").write_text('{"reason": "schema"}\n')
    (home / "api.log").write_text("a log the next start writes anew\n")


def test_a_stopped_instance_is_backed_up_and_force_replaces_another(tmp_path: Path) -> None:
    home, other, backup = tmp_path / "home", tmp_path / "other", tmp_path / "backup"
    _instance(home)
    taken = safecity(home, "backup", str(backup))
    assert taken.returncode == 0, taken.stderr
    assert "temporary influxd" in taken.stderr
    listed = {e["path"] for e in json.loads((backup / MANIFEST).read_text())["files"]}
    assert f"{FILES_DIR}/identity/secrets.json" in listed
    assert f"{FILES_DIR}/api.log" not in listed
    assert oct(backup.stat().st_mode & 0o777) == oct(0o700)

    (other / "identity").mkdir(parents=True)
    (other / "identity" / "secrets.json").write_text('{"dev-1": "another"}\n')
    refused = safecity(other, "restore", str(backup))
    assert refused.returncode == 2 and "--force" in refused.stderr, refused.stderr
    forced = safecity(other, "restore", "--force", str(backup))
    assert forced.returncode == 0, forced.stderr
    restored = instance.layout(other)
    assert json.loads(restored.secrets_file.read_text()) == {"dev-1": "s3cret"}
    assert restored.secrets_file.stat().st_mode & 0o777 == 0o600
    assert (restored.deadletter_dir / "deadletters.jsonl").exists()

    # A running instance (its launcher's state file names a live pid) is never replaced.
    state = instance.Running(os.getpid(), "127.0.0.1", 1, "http://127.0.0.1:1", "http://x")
    instance.record(restored, state)
    running = safecity(other, "restore", "--force", str(backup))
    assert running.returncode == 2 and "running" in running.stderr, running.stderr
    assert restored.secrets_file.exists()
