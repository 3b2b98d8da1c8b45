"""The live stream resumes: ids, retry hint, keep-alives, Last-Event-ID replay exactly once,
an explicit gap notice, and a cap of live streams per key — real API, real Mosquitto."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
from support import mosquitto_pub, wait_for

from control.stack import LocalStack
from safecity import topics
from safecity.readings import format_ts
from safecity.registry import default_city

CITY = default_city()
MINE = CITY.select(kind="noise", district="uchtepa")[0]
TOPIC = topics.telemetry_topic(CITY.id, MINE.district, MINE.kind, MINE.id)
PARAMS = {"district": "uchtepa", "kind": "noise"}


def _publish(stack: LocalStack, *seqs: int) -> None:
    now = datetime.now(UTC)
    mosquitto_pub(
        stack,
        TOPIC,
        *(
            json.dumps(
                {
                    "ts": format_ts(now),
                    "seq": n,
                    "values": {"laeq": 60.0, "lamax": 70.0, "la90": 50.0},
                }
            )
            for n in seqs
        ),
    )


def sse(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """SSE frames from lines: each a dict of its fields (a comment frame has `comment`)."""
    frame: dict[str, str] = {}
    for line in lines:
        if line == "":
            if frame:
                yield frame
            frame = {}
            continue
        if line.startswith(":"):
            frame["comment"] = line[1:].strip()
            continue
        name, _, value = line.partition(":")
        frame[name] = value.removeprefix(" ")


class Witness:
    """A second stream kept open in a thread: proves the hub saw what was published."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.seqs: list[int] = []
        self.comments: list[str] = []
        self.ready = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, args=(url, headers), daemon=True)
        self._thread.start()
        assert self.ready.wait(30)

    def _run(self, url: str, headers: dict[str, str]) -> None:
        with httpx.stream("GET", url, params=PARAMS, headers=headers, timeout=60) as r:
            for frame in sse(r.iter_lines()):
                if "retry" in frame:
                    self.ready.set()
                if "comment" in frame:
                    self.comments.append(frame["comment"])
                if frame.get("event") == "reading":
                    self.seqs.append(json.loads(frame["data"])["seq"])
                if self._stop:
                    return

    def wait_for(self, seq: int) -> None:
        wait_for(lambda: seq in self.seqs, 30, f"the hub to pass on seq {seq}", interval=0.05)

    def close(self) -> None:
        self._stop = True


def _readings(frames: Iterator[dict[str, str]], count: int) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for frame in frames:
        if frame.get("event") == "reading":
            out.append((frame["id"], json.loads(frame["data"])["seq"]))
            if len(out) == count:
                return out
    raise AssertionError("stream ended early")


def _first_stream(url: str, headers: dict[str, str], stack: LocalStack) -> list[tuple[str, int]]:
    """A stream that takes two of three readings, then disconnects; the per-key cap meanwhile."""
    with httpx.stream("GET", url, params=PARAMS, headers=headers, timeout=30) as r:
        assert r.status_code == 200
        frames = sse(r.iter_lines())
        first = next(frames)
        assert first["comment"] == "connected" and first["retry"] == "2500"
        # The key holds the witness and this stream; a third fits, a fourth is refused.
        with httpx.stream("GET", url, headers=headers, timeout=30) as third:
            assert third.status_code == 200
            fourth = httpx.get(url, headers=headers, timeout=30)
            assert fourth.status_code == 429
            assert "3 live streams" in fourth.json()["detail"]
        _publish(stack, 1, 2, 3)
        return _readings(frames, 2)  # disconnect mid-stream, after two of three


def _resumed(url: str, headers: dict[str, str], stack: LocalStack) -> list[tuple[str, int]]:
    """Resume with `headers`' Last-Event-ID: the missed readings, then a live one."""
    with httpx.stream("GET", url, params=PARAMS, headers=headers, timeout=30) as r:
        assert r.status_code == 200
        frames = sse(r.iter_lines())
        _publish(stack, 6)
        return _readings(frames, 4)


def _gaps(url: str, api: Any, headers: dict[str, str], stack: LocalStack, witness: Witness) -> None:
    """Missed more than the buffer keeps, or an id of another run: an explicit gap."""
    # Missed more than the buffer keeps: an explicit gap, then the live items.
    _publish(stack, *range(7, 15))
    witness.wait_for(14)
    with httpx.stream("GET", url, params=PARAMS, headers=headers, timeout=30) as r:
        frames = sse(r.iter_lines())
        gap = next(f for f in frames if "event" in f)
        assert gap["event"] == "gap" and "no longer kept" in json.loads(gap["data"])["detail"]
        replayed = _readings(frames, 6)
    assert [seq for _, seq in replayed] == list(range(9, 15))
    # An id of another run of the API: a gap too.
    stale = {**api.headers, "Last-Event-ID": "00000000-3"}
    with httpx.stream("GET", url, params=PARAMS, headers=stale, timeout=30) as r:
        frame = next(f for f in sse(r.iter_lines()) if "event" in f)
        assert frame["event"] == "gap" and "not from this stream" in frame["data"]


def test_a_client_resumes_and_gets_every_item_exactly_once(
    stack: LocalStack, influx_db: str, start_api: Callable[..., Any]
) -> None:
    api = start_api(
        influx_db,
        SAFECITY_STREAM_REPLAY="6",
        SAFECITY_STREAM_HEARTBEAT="0.5",
        SAFECITY_STREAM_RETRY_MS="2500",
        SAFECITY_STREAM_MAX_PER_KEY="3",
    )
    url = f"{api.url}/v1/stream"
    witness = Witness(url, api.headers)
    try:
        got = _first_stream(url, api.headers, stack)
        last_id = got[-1][0]
        _publish(stack, 4, 5)  # while disconnected
        witness.wait_for(5)
        headers = {**api.headers, "Last-Event-ID": last_id}
        got += _resumed(url, headers, stack)
        assert [seq for _, seq in got] == [1, 2, 3, 4, 5, 6]
        ids = [i for i, _ in got]
        assert len(set(ids)) == 6
        numbers = [int(i.split("-")[1]) for i in ids]
        assert numbers == sorted(numbers)
        # Idle: keep-alive comments (every 0.5 s).
        witness.wait_for(6)
        wait_for(lambda: "keep-alive" in witness.comments, 10, "a keep-alive comment")
        _gaps(url, api, headers, stack, witness)
    finally:
        witness.close()
