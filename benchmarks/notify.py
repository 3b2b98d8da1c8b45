"""Notifier throughput, CPU per page and first-delivery latency, against a naive sender.

`python -m benchmarks.notify [--storm N] [--people P] [--isolated K]`. In process: the
notifier's own stages (plan -> outbox commit -> dispatch with digests -> webhook channel)
against a signature-checking webhook receiver in a child process (so its CPU is not ours),
and in the same run a naive sender: one signed POST per incident and person, 32 at a
time, no outbox, no digest (what a notifier without them does). Figures:

- storm: N incidents arriving at once, each paging P people (N x P pages): pages/s
  delivered, CPU seconds of the sender per page, first delivery per incident (p50/p95
  from the storm's start), HTTP requests made;
- isolated incidents (one at a time, idle pipeline): first delivery p50/p95 — the part of
  "tier 1 paged within 5 s" the notifier owns (the broker and alerts hops add their own).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from notify import routing
from notify.channels.base import Delivery
from notify.channels.webhook import WebhookChannel, signature
from notify.dispatch import Dispatcher
from notify.plan import Planner
from safecity import acklinks
from safecity import incidents as inc
from safecity.outbox import DeliveryStatus, Outbox

SECRET = b"bench-secret"


def _serve(port_out: Any) -> None:
    """A webhook receiver that checks every signature (the child process)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            stamp = self.headers.get("X-Safecity-Timestamp", "")
            mac = hmac.new(SECRET, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
            ok = hmac.compare_digest(self.headers.get("X-Safecity-Signature", ""), "sha256=" + mac)
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port_out.put(server.server_address[1])
    server.serve_forever()


def _routing(people: int) -> routing.Routing:
    names = [f"p{i}" for i in range(people)]
    text = json.dumps({
        "city": "tashkent", "timezone": "Asia/Tashkent", "digest_max": 50,
        "channels": {"hook": {"type": "webhook", "url": "http://x", "secret_file": "/x",
                              "rate_per_s": 10_000}},
        "people": [{"id": n, "name": n, "contacts": {"hook": n}} for n in names],
        "rosters": [{"id": "duty", "shifts": [{"people": names}]}],
        "policies": [{"id": "p", "tiers": [{"roster": "duty"}]}],
        "routes": [{"policy": "p"}],
    })  # fmt: skip
    return routing.loads(text)


def _incident(n: int) -> inc.Incident:
    return inc.open_incident(
        city="tashkent", district="chilonzor", rule_id="gunshot", rule_type="event",
        severity="critical", place=f"storm-{n}", devices=("gs-1",),
        opened_at=datetime(2026, 12, 7, 10, 0, tzinfo=UTC), value=None, message=f"storm {n}",
    )  # fmt: skip


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Counting(WebhookChannel):
    """The webhook channel, counting requests and each incident's first delivery."""

    def __init__(self, url: str) -> None:
        super().__init__(url, SECRET, 10.0)
        self.requests = 0
        self.first: dict[str, float] = {}

    async def send(self, delivery: Delivery) -> Any:
        outcome = await super().send(delivery)
        self.requests += 1
        now = time.perf_counter()
        for page in delivery.pages:
            self.first.setdefault(str(page["incident_id"]), now)
        return outcome


async def _notifier(url: str, incidents: int, people: int, work: Path) -> dict[str, float]:
    box = Outbox(work / f"bench-{incidents}-{time.time_ns()}.db", owner="bench")
    key = acklinks.ensure_key(work / "ack.key")
    planner = Planner(_routing(people), lambda c: acklinks.sign(key, c), "http://api")
    channel = Counting(url)
    dispatcher = Dispatcher(box, {"hook": channel}, {}, digest_max=50, max_in_flight=32)
    runner = asyncio.create_task(dispatcher.run(poll_s=0.01))
    cpu, start = time.process_time(), time.perf_counter()
    for first in range(0, incidents, 500):  # the intake's batches, one commit each
        batch = [_incident(n) for n in range(first, min(incidents, first + 500))]
        box.enqueue([m for i in batch for m in planner.plan(i, time.time())])
    while box.counts()[DeliveryStatus.PENDING]:  # noqa: ASYNC110 (the outbox is the truth)
        await asyncio.sleep(0.005)
    wall, used = time.perf_counter() - start, time.process_time() - cpu
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    await channel.close()
    box.close()
    latency = [t - start for t in channel.first.values()]
    pages = incidents * people
    return {"pages_s": pages / wall, "cpu_ms_page": used * 1000 / pages, "wall_s": wall,
            "p50_s": _pct(latency, 0.5), "p95_s": _pct(latency, 0.95),
            "requests": channel.requests}  # fmt: skip


async def _naive(url: str, incidents: int, people: int) -> dict[str, float]:
    """One signed POST per incident and person, 32 in flight, nothing durable."""
    client = httpx.AsyncClient(timeout=10.0)
    gate = asyncio.Semaphore(32)
    first: dict[int, float] = {}

    async def page(n: int, person: int) -> None:
        body = json.dumps({"key": f"inc-{n}/{person}", "to": f"p{person}",
                           "text": f"storm {n}"}).encode()  # fmt: skip
        stamp = str(int(time.time()))
        headers = {
            "X-Safecity-Timestamp": stamp,
            "X-Safecity-Signature": signature(SECRET, stamp, body),
        }
        async with gate:
            response = await client.post(url, content=body, headers=headers)
        response.raise_for_status()
        first.setdefault(n, time.perf_counter())

    cpu, start = time.process_time(), time.perf_counter()
    await asyncio.gather(*(page(n, p) for n in range(incidents) for p in range(people)))
    wall, used = time.perf_counter() - start, time.process_time() - cpu
    await client.aclose()
    latency = [t - start for t in first.values()]
    pages = incidents * people
    return {"pages_s": pages / wall, "cpu_ms_page": used * 1000 / pages, "wall_s": wall,
            "p50_s": _pct(latency, 0.5), "p95_s": _pct(latency, 0.95),
            "requests": pages}  # fmt: skip


async def _isolated(url: str, count: int, work: Path) -> list[float]:
    """First delivery of incidents that arrive one at a time on an idle notifier."""
    out = []
    for n in range(count):
        figures = await _notifier(url, 1, 1, work)
        out.append(figures["wall_s"])
        del n
    return out


def main(argv: list[str] | None = None) -> None:
    """Run the storm for both senders and the isolated incidents; print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.notify")
    parser.add_argument("--storm", type=int, default=500, help="incidents in the storm")
    parser.add_argument("--people", type=int, default=5, help="people paged per incident")
    parser.add_argument("--isolated", type=int, default=40, help="one-at-a-time incidents")
    args = parser.parse_args(argv)
    ports: Any = multiprocessing.Queue()
    receiver = multiprocessing.Process(target=_serve, args=(ports,), daemon=True)
    receiver.start()
    url = f"http://127.0.0.1:{ports.get(timeout=10)}/hook"
    print(f"conditions: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; storm "
          f"{args.storm} incidents x {args.people} people; receiver checks every signature "
          "in its own process; outbox sqlite WAL synchronous=FULL in a temp dir",
          flush=True)  # fmt: skip
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ours = asyncio.run(_notifier(url, args.storm, args.people, Path(tmp)))
            naive = asyncio.run(_naive(url, args.storm, args.people))
            alone = asyncio.run(_isolated(url, args.isolated, Path(tmp)))
    finally:
        receiver.terminate()
    print(f"{'sender':<34}{'pages/s':>9}{'CPU ms/page':>13}{'requests':>10}"
          f"{'first p50 s':>13}{'first p95 s':>13}")  # fmt: skip
    for name, f in (("notifier (outbox, digests)", ours), ("naive (1 POST per page)", naive)):
        print(f"{name:<34}{f['pages_s']:>9.0f}{f['cpu_ms_page']:>13.3f}{f['requests']:>10.0f}"
              f"{f['p50_s']:>13.3f}{f['p95_s']:>13.3f}")  # fmt: skip
    print(
        f"ratio notifier/naive: pages/s x{ours['pages_s'] / naive['pages_s']:.2f}, "
        f"CPU per page x{ours['cpu_ms_page'] / naive['cpu_ms_page']:.2f}"
    )
    print(
        f"isolated incidents ({len(alone)}): first delivery p50 {statistics.median(alone):.3f} s,"
        f" p95 {_pct(alone, 0.95):.3f} s (plan + durable commit + dispatch + HTTP 200)"
    )


if __name__ == "__main__":
    main()
