"""InfluxDB's part of a backup is checked in: a shard `influxd backup` silently left out
(the 1.x client keeps no file, and says nothing, when the server sends nothing of a
shard) is noticed and the part taken again, or the backup fails naming the shard.

A real influxd holds the data; the fault is a wrapper around the real `influxd` that,
after the real backup, deletes one shard's file and its manifest entry: exactly what
the client leaves behind when the server's shard snapshot failed.
"""

from __future__ import annotations

import json
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from control import influxbackup
from control.influxd import Influxd
from control.settings import BackupSettings
from safecity.errors import BackupError

# Drops the incidents shard from the backup DIR (the last argument) while a counter file
# allows, then behaves as the real influxd did.
WRAPPER = """#!/bin/sh
"$REAL_INFLUXD" "$@" || exit $?
for last; do :; done
count=$(cat "$DROPS")
[ "$count" -gt 0 ] || exit 0
echo $((count - 1)) > "$DROPS"
exec "$PYTHON" - "$last" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
for path in out.glob("*.manifest"):
    data = json.loads(path.read_text())
    for entry in [f for f in data["files"] if f["policy"] == "incidents"]:
        (out / entry["fileName"]).unlink()
        data["files"].remove(entry)
    path.write_text(json.dumps(data))
PY
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    influxd = Influxd(tmp_path_factory.mktemp("influxd"))
    influxd.start()
    for statement in (
        "CREATE DATABASE city",
        "CREATE RETENTION POLICY incidents ON city DURATION 0s REPLICATION 1",
    ):
        httpx.post(f"{influxd.url}/query", data={"q": statement}, timeout=10).raise_for_status()
    for rp, line in (("autogen", "noise,district=a laeq=55"), ("incidents", "t,city=x seq=0i")):
        httpx.post(
            f"{influxd.url}/write", params={"db": "city", "rp": rp}, content=line, timeout=10
        ).raise_for_status()
    yield influxd
    influxd.stop()


def _rpc(server: Influxd) -> str:
    return f"{server.host}:{server.rpc_port}"


def _settings(tmp_path: Path, drops: int, env: pytest.MonkeyPatch) -> BackupSettings:
    wrapper = tmp_path / "influxd"
    wrapper.write_text(WRAPPER)
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "drops").write_text(str(drops))
    env.setenv("REAL_INFLUXD", shutil.which("influxd") or "influxd")
    env.setenv("DROPS", str(tmp_path / "drops"))
    env.setenv("PYTHON", shutil.which("python3") or "python3")
    return BackupSettings(influxd_binary=wrapper)


def test_a_shard_left_out_is_noticed_and_the_backup_taken_again(
    server: Influxd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "influxdb"
    settings = _settings(tmp_path, 1, monkeypatch)
    databases = influxbackup.backup_all(settings, _rpc(server), out)
    assert databases == ("city",)
    assert {rp for _, rp, _ in influxbackup.shards_in(out)} == {"autogen", "incidents"}
    assert (tmp_path / "drops").read_text().strip() == "0"  # the first one was dropped


def test_a_shard_left_out_every_time_fails_the_backup_naming_it(
    server: Influxd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path, 9, monkeypatch)
    with pytest.raises(BackupError, match=r"left out city\.incidents shard \d+ in 3 attempts"):
        influxbackup.backup_all(settings, _rpc(server), tmp_path / "out")
    assert json.loads((tmp_path / "drops").read_text()) == 9 - influxbackup.ATTEMPTS
