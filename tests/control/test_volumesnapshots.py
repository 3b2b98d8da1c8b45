"""The services' volumes snapshotted through the Kubernetes API, as the backup job does it.

No cluster here: a local server answers the three calls the job makes with the request
and response shapes of the Kubernetes API reference (list claims by label selector,
create a `snapshot.storage.k8s.io/v1` VolumeSnapshot, read it until `readyToUse`), with
bearer-token authentication, and a snapshot that the storage fails.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from standin import Request, StandIn

from control.settings import BackupSettings
from control.volumesnapshots import SNAPSHOTS_FILE, in_cluster, snapshot_claims
from safecity.errors import BackupError

TOKEN = "service-account-token"
NS = "safecity"
CLAIMS = {
    "data-safecity-ingest-0": {"safecity/backup": "snapshot"},
    "data-safecity-notify-0": {"safecity/backup": "snapshot"},
    "data-safecity-influxdb-0": {},
}
GROUP = f"/apis/snapshot.storage.k8s.io/v1/namespaces/{NS}/volumesnapshots"


def _kubernetes(state: dict[str, Any], request: Request) -> tuple[int, Any]:
    """The Kubernetes API calls of the backup job, answered from `state`."""
    if request.headers.get("Authorization") != f"Bearer {TOKEN}":
        return 401, {"kind": "Status", "message": "Unauthorized", "code": 401}
    if request.method == "POST":
        body = request.json()
        state["snapshots"][body["metadata"]["name"]] = {"body": body, "reads": 0}
        return 201, body
    if request.path == f"/api/v1/namespaces/{NS}/persistentvolumeclaims":
        key, value = parse_qs(request.query)["labelSelector"][0].split("=")
        items = [
            {"metadata": {"name": n, "labels": labels}}
            for n, labels in CLAIMS.items()
            if labels.get(key) == value
        ]
        return 200, {"kind": "PersistentVolumeClaimList", "items": items}
    if request.path.removeprefix(GROUP + "/") in state["snapshots"]:
        snapshot = state["snapshots"][request.path.removeprefix(GROUP + "/")]
        snapshot["reads"] += 1
        return 200, {**snapshot["body"], "status": _status(snapshot, state["failing"])}
    return 404, {"kind": "Status", "message": "not found", "code": 404}


def _status(snapshot: dict[str, Any], failing: set[str]) -> dict[str, Any]:
    """Not ready at the first read, then ready (or failed, for a claim in `failing`)."""
    claim = snapshot["body"]["spec"]["source"]["persistentVolumeClaimName"]
    if claim in failing:
        return {"readyToUse": False, "error": {"message": "the disk said no"}}
    if snapshot["reads"] < 2:
        return {"readyToUse": False}
    return {"readyToUse": True, "creationTime": "2026-12-07T02:30:01Z", "restoreSize": "10Gi"}


@pytest.fixture
def api() -> Iterator[tuple[str, dict[str, Any]]]:
    state: dict[str, Any] = {"snapshots": {}, "failing": set()}
    with StandIn(partial(_kubernetes, state)) as server:
        yield server.url, state


def _account(tmp_path: Path, token: str = TOKEN) -> Path:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(token + "\n")
    (account / "namespace").write_text(NS)
    return account


def test_every_selected_claim_is_snapshotted_and_named_in_the_backup(
    api: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    url, state = api
    settings = BackupSettings(
        snapshot_claims="safecity/backup=snapshot", snapshot_class="csi-snap", kubernetes_api=url
    )
    cluster = in_cluster(settings, _account(tmp_path), env={})
    assert snapshot_claims(settings, cluster, "20261207t023000z", tmp_path) == 2
    made = {name: s["body"] for name, s in state["snapshots"].items()}
    assert sorted(made) == [
        "data-safecity-ingest-0-20261207t023000z",
        "data-safecity-notify-0-20261207t023000z",
    ]
    body = made["data-safecity-ingest-0-20261207t023000z"]
    assert body["apiVersion"] == "snapshot.storage.k8s.io/v1" and body["kind"] == "VolumeSnapshot"
    assert body["spec"] == {
        "source": {"persistentVolumeClaimName": "data-safecity-ingest-0"},
        "volumeSnapshotClassName": "csi-snap",
    }
    # The backup waited until each was ready, and names them with their creation time.
    assert all(s["reads"] >= 2 for s in state["snapshots"].values())
    written = json.loads((tmp_path / SNAPSHOTS_FILE).read_text())
    assert [(w["claim"], w["creationTime"]) for w in written] == [
        ("data-safecity-ingest-0", "2026-12-07T02:30:01Z"),
        ("data-safecity-notify-0", "2026-12-07T02:30:01Z"),
    ]


def test_a_refused_or_failed_snapshot_fails_the_backup_with_the_reason(
    api: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    url, state = api
    settings = BackupSettings(snapshot_claims="safecity/backup=snapshot", kubernetes_api=url)
    wrong = in_cluster(settings, _account(tmp_path, "stale-token"), env={})
    with pytest.raises(BackupError, match=r"listing the claims to snapshot: .* 401: Unauthorized"):
        snapshot_claims(settings, wrong, "s1", tmp_path)

    (tmp_path / "serviceaccount" / "token").write_text(TOKEN)
    cluster = in_cluster(settings, tmp_path / "serviceaccount", env={})
    state["failing"].add("data-safecity-notify-0")
    with pytest.raises(BackupError, match="the snapshot failed: the disk said no"):
        snapshot_claims(settings, cluster, "s2", tmp_path)
    assert not (tmp_path / SNAPSHOTS_FILE).exists()


def test_outside_a_pod_without_an_address_the_backup_says_so(tmp_path: Path) -> None:
    settings = BackupSettings(snapshot_claims="safecity/backup=snapshot")
    with pytest.raises(BackupError, match="not a Kubernetes pod"):
        in_cluster(settings, _account(tmp_path), env={})
