"""The load: payloads, the ledger of what was sent, and publishing it with Mosquitto's client."""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

from control.stack import LocalStack
from safecity import ledger, topics
from safecity.readings import epoch_ms, format_ts
from safecity.registry import Device, default_city
from simulators.generators import generate
from tests.helpers.support import mosquitto

CHUNK = 50_000  # mosquitto_pub -l at QoS 1 stops early past 65,535 lines per call
PUBLISHER = "_simulator"  # may write every device topic and _services
READER = "_api"  # read-only
INGEST = "_ingest"
WORKER_COUNTS = (1, 2, 3)
KINDS = ("air_quality", "noise", "parking", "traffic", "waste", "weather", "crowd")
CITY = default_city()


def payloads(n: int, start: datetime, seed: int) -> dict[Device, list[bytes]]:
    """`n` valid readings spread over the city's telemetry devices (ms-distinct timestamps)."""
    devices = [d for d in CITY.devices if d.kind in KINDS]
    rng = random.Random(seed)
    out: dict[Device, list[bytes]] = {d: [] for d in devices}
    for i in range(n):
        device = devices[i % len(devices)]
        k = i // len(devices)
        ts = start + timedelta(milliseconds=k * 1000 + i % len(devices))
        body = {
            "ts": format_ts(ts),
            "seq": seed * 10_000_000 + k,
            "values": generate(device, rng, ts),
        }
        out[device].append(json.dumps(body, separators=(",", ":")).encode())
    return out


def write_ledger(path: Path, batches: dict[Device, list[bytes]]) -> None:
    """Ledger of what mosquitto_pub sent (it exits 0 only when every PUBACK arrived)."""
    import hashlib

    writer = ledger.LedgerWriter(path)
    for device, items in batches.items():
        topic = topics.telemetry_topic(CITY.id, device.district, device.kind, device.id)
        for raw in items:
            body = json.loads(raw)
            ts = datetime.fromisoformat(body["ts"])
            writer.write(
                ledger.LedgerEntry(
                    device.id,
                    "telemetry",
                    topic,
                    body["seq"],
                    epoch_ms(ts),
                    hashlib.sha256(raw).hexdigest(),
                    None,
                    0,
                    body["values"],
                )
            )
    writer.close()


def mosquitto_pub(stack: LocalStack, topic: str, lines: Sequence[bytes], name: str) -> None:
    """Publish lines at QoS 1 (MQTT v5) with Mosquitto's own client as `_simulator`, in chunks."""
    for i in range(0, len(lines), CHUNK):
        subprocess.run(
            [
                *mosquitto("mosquitto_pub", stack, PUBLISHER, client_id=f"{name}-{i}"),
                *("-q", "1", "-t", topic, "-l"),
            ],
            input=b"\n".join(lines[i : i + CHUNK]) + b"\n",
            check=True,
            timeout=600,
        )


def publish_all(stack: LocalStack, batches: dict[Device, list[bytes]], parallel: int = 4) -> None:
    """One mosquitto_pub per device topic, `parallel` at a time."""
    with ThreadPoolExecutor(parallel) as pool:
        futures = [
            pool.submit(
                mosquitto_pub,
                stack,
                topics.telemetry_topic(CITY.id, d.district, d.kind, d.id),
                items,
                f"bench-{d.id}",
            )
            for d, items in batches.items()
            if items
        ]
        for f in futures:
            f.result()
