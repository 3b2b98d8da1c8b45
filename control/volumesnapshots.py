"""Kubernetes: the services' own volumes in a backup, as CSI volume snapshots.

Those volumes (the ingest's spool and dead letters, the notifier's outbox, the broker's
persistence) are ReadWriteOnce and in use by their pods, each maybe on another node, so
no backup pod can read them all. The cluster's storage can: `safecity backup` asks the
Kubernetes API for a `VolumeSnapshot` (snapshot.storage.k8s.io/v1) of every claim the
label selector `snapshot_claims` picks, at the point of the backup where the local
instance's spool and dead letters are copied (before InfluxDB's part, so the recovery
point holds), and waits until each is ready to use. A snapshot is crash-consistent,
which is what these services are built to come back from (SQLite in WAL with
synchronous writes, a spool that fsyncs before it acknowledges: a `kill -9` loses
nothing). The snapshots' names go into the backup (`volume-snapshots.json`, in the
manifest with its checksum); restore makes new claims from them (`dataSource`).

The job's ServiceAccount may list claims and create and read snapshots in its own
namespace, nothing else (deploy/kubernetes/base/backup.yaml).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from control.settings import BackupSettings
from safecity.errors import BackupError

__all__ = ["SNAPSHOTS_FILE", "Cluster", "in_cluster", "snapshot_claims"]

SNAPSHOTS_FILE = "volume-snapshots.json"
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_GROUP = "/apis/snapshot.storage.k8s.io/v1"

Say = Callable[[str], None]


@dataclass(frozen=True)
class Cluster:
    """How to reach the Kubernetes API from a pod: address, token, CA, namespace."""

    api: str
    token: str
    ca: Path | None
    namespace: str


def in_cluster(
    settings: BackupSettings, account: Path = SERVICE_ACCOUNT, env: Mapping[str, str] = os.environ
) -> Cluster:
    """The pod's own service account (or the API address the settings name)."""
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
    api = settings.kubernetes_api or (f"https://{host}:{port}" if host else None)
    if api is None:
        raise BackupError(
            "SAFECITY_SNAPSHOT_CLAIMS is set but this is not a Kubernetes pod "
            "(no KUBERNETES_SERVICE_HOST): give SAFECITY_KUBERNETES_API"
        )
    try:
        token = (account / "token").read_text(encoding="utf-8").strip()
        namespace = (account / "namespace").read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise BackupError(f"no service account token in {account}: {exc.strerror}") from exc
    ca = account / "ca.crt"
    return Cluster(api, token, ca if ca.exists() else None, namespace)


def _answer(response: httpx.Response, what: str) -> dict[str, Any]:
    if response.status_code >= 300:
        try:
            reason = response.json().get("message", response.text)
        except ValueError:
            reason = response.text
        raise BackupError(f"{what}: Kubernetes answered {response.status_code}: {reason}")
    body: dict[str, Any] = response.json()
    return body


def _request(settings: BackupSettings, claim: str, stamp: str, namespace: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"source": {"persistentVolumeClaimName": claim}}
    if settings.snapshot_class:
        spec["volumeSnapshotClassName"] = settings.snapshot_class
    return {
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshot",
        "metadata": {
            "name": f"{claim}-{stamp}"[:253],
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "safecity-backup", "safecity/backup": stamp},
        },
        "spec": spec,
    }


def _ready(client: httpx.Client, path: str, deadline: float) -> dict[str, Any]:
    """Wait until the snapshot at `path` is ready to use; its status."""
    while True:
        status = _answer(client.get(path), f"reading {path}").get("status") or {}
        if status.get("readyToUse"):
            return dict(status)
        error = (status.get("error") or {}).get("message")
        if error:
            raise BackupError(f"{path}: the snapshot failed: {error}")
        if time.monotonic() > deadline:
            raise BackupError(f"{path}: not ready to use in time (SAFECITY_SNAPSHOT_TIMEOUT)")
        time.sleep(1.0)


def snapshot_claims(settings: BackupSettings, cluster: Cluster, stamp: str, out: Path) -> int:
    """Snapshot every claim `settings.snapshot_claims` selects, wait until all are ready,
    write their names to `out/volume-snapshots.json`; how many."""
    ns = cluster.namespace
    auth = {"Authorization": f"Bearer {cluster.token}"}
    verify: str | bool = str(cluster.ca) if cluster.ca else True
    with httpx.Client(base_url=cluster.api, headers=auth, verify=verify, timeout=30) as client:
        listed = _answer(
            client.get(
                f"/api/v1/namespaces/{ns}/persistentvolumeclaims",
                params={"labelSelector": settings.snapshot_claims or ""},
            ),
            "listing the claims to snapshot",
        )
        claims = sorted(item["metadata"]["name"] for item in listed.get("items") or [])
        made = []
        for claim in claims:
            body = _request(settings, claim, stamp, ns)
            created = client.post(f"{_GROUP}/namespaces/{ns}/volumesnapshots", json=body)
            _answer(created, f"snapshotting claim {claim}")
            made.append((claim, body["metadata"]["name"]))
        deadline = time.monotonic() + settings.snapshot_timeout
        records = [
            {"claim": claim, "snapshot": name, "namespace": ns}
            | {
                k: v
                for k, v in _ready(
                    client, f"{_GROUP}/namespaces/{ns}/volumesnapshots/{name}", deadline
                ).items()
                if k in ("creationTime", "restoreSize", "boundVolumeSnapshotContentName")
            }
            for claim, name in made
        ]
    (out / SNAPSHOTS_FILE).write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")
    return len(records)
