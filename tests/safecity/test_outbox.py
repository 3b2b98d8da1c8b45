"""The durable outbox: idempotent enqueue, lanes in order, leases, bounded retries, kill -9."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import wait_for

from safecity.outbox import _SCHEMA, DeliveryStatus, Message, Outbox, Outcome, Result
from safecity.retry import Backoff


class Clock:
    """A settable clock (epoch seconds)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _box(path: Path, clock: Clock, **kw: object) -> Outbox:
    return Outbox(path, owner="t", clock=clock, rng=random.Random(1), **kw)  # type: ignore[arg-type]


def _msg(key: str, recipient: str = "ann", group: str = "", **kw: object) -> Message:
    return Message(key, "webhook", recipient, {"k": key}, group, **kw)  # type: ignore[arg-type]


def test_enqueue_is_idempotent_by_key(tmp_path: Path) -> None:
    box = _box(tmp_path / "o.db", Clock())
    assert box.enqueue([_msg("a"), _msg("b")]) == 2
    assert box.enqueue([_msg("a"), _msg("c")]) == 1
    assert [e.key for e in box.entries()] == ["a", "b", "c"]
    assert box.counts()[DeliveryStatus.PENDING] == 3


def test_a_lane_goes_in_order_and_lanes_are_independent(tmp_path: Path) -> None:
    box = _box(tmp_path / "o.db", Clock())
    box.enqueue([_msg("a1", "ann"), _msg("b1", "bob"), _msg("a2", "ann")])
    first = box.claim()
    assert sorted(e.key for lease in first for e in lease.entries) == ["a1", "b1"]
    assert box.claim() == []  # both lanes are leased
    for lease in first:
        box.settle(lease, Outcome.delivered())
    (second,) = box.claim()
    assert [e.key for e in second.entries] == ["a2"]
    assert second.entries[0].attempts == 1


def test_per_lane_claims_a_prefix_for_a_digest(tmp_path: Path) -> None:
    box = _box(tmp_path / "o.db", Clock())
    box.enqueue([_msg(f"m{i}") for i in range(5)])
    (lease,) = box.claim(per_lane=3)
    assert [e.key for e in lease.entries] == ["m0", "m1", "m2"]
    box.settle(lease, Outcome.delivered("digest"))
    (rest,) = box.claim(per_lane=10)
    assert [e.key for e in rest.entries] == ["m3", "m4"]


def test_a_retry_waits_its_backoff_and_blocks_its_lane(tmp_path: Path) -> None:
    clock = Clock()
    box = _box(tmp_path / "o.db", clock, backoff=Backoff(base=10.0, cap=10.0))
    box.enqueue([_msg("a1"), _msg("a2")])
    (lease,) = box.claim()
    box.settle(lease, Outcome.retry("503", retry_after=20.0))
    assert box.claim() == []  # a2 must not overtake a1
    due = box.next_due()
    assert due is not None and 20.0 <= due - clock.now <= 20.0 + 1e-6
    clock.now += 20.0
    (again,) = box.claim()
    assert [(e.key, e.attempts) for e in again.entries] == [("a1", 2)]
    box.settle(again, Outcome.delivered())
    results = [a.result for a in box.attempts("a1")]
    assert results == [Result.RETRY, Result.DELIVERED]


def test_retries_are_bounded_and_the_lane_moves_on(tmp_path: Path) -> None:
    clock = Clock()
    box = _box(tmp_path / "o.db", clock, max_attempts=3, backoff=Backoff(base=1.0, cap=1.0))
    box.enqueue([_msg("a1"), _msg("a2")])
    for _ in range(3):
        clock.now += 5
        (lease,) = box.claim()
        assert lease.entries[0].key == "a1"
        box.settle(lease, Outcome.retry("down"))
    (a1,) = box.entries(status=DeliveryStatus.FAILED)
    assert a1.key == "a1" and a1.attempts == 3 and a1.detail == "down"
    clock.now += 5
    (lease,) = box.claim()
    assert lease.entries[0].key == "a2"


def test_a_permanent_failure_is_not_retried(tmp_path: Path) -> None:
    box = _box(tmp_path / "o.db", Clock())
    box.enqueue([_msg("a1")])
    (lease,) = box.claim()
    box.settle(lease, Outcome.failed("400 bad recipient"))
    assert box.entries()[0].status is DeliveryStatus.FAILED
    assert box.claim() == []


def test_a_later_message_does_not_block_one_due_now(tmp_path: Path) -> None:
    clock = Clock()
    box = _box(tmp_path / "o.db", clock)
    box.enqueue([_msg("later", not_before=clock.now + 600), _msg("now")])
    (lease,) = box.claim()
    assert [e.key for e in lease.entries] == ["now"]
    box.settle(lease, Outcome.delivered())
    assert box.claim() == []
    clock.now += 600
    assert [e.key for e in box.claim()[0].entries] == ["later"]


def test_cancel_drops_the_pending_messages_of_a_group(tmp_path: Path) -> None:
    clock = Clock()
    box = _box(tmp_path / "o.db", clock)
    box.enqueue([_msg("t1", group="inc-1"), _msg("t2", "bob", "inc-1", not_before=clock.now + 60)])
    (lease,) = box.claim()
    box.settle(lease, Outcome.delivered())
    assert box.cancel("inc-1", "acknowledged") == 1
    by_key = {e.key: e for e in box.entries(group="inc-1")}
    assert by_key["t1"].status is DeliveryStatus.DELIVERED
    assert by_key["t2"].status is DeliveryStatus.CANCELLED and by_key["t2"].detail == "acknowledged"


def test_a_message_past_its_expiry_is_never_sent_and_its_lane_moves_on(tmp_path: Path) -> None:
    clock = Clock()
    box = _box(tmp_path / "o.db", clock)
    box.enqueue([_msg("a1", expires_at=clock.now + 10), _msg("a2"), _msg("b1", "bob")])
    (a1, b1) = sorted(box.claim(), key=lambda lease: lease.recipient)
    box.settle(a1, Outcome.retry("no answer", retry_after=30))
    box.settle(b1, Outcome.delivered())
    clock.now += 5  # in flight at its expiry: the attempt runs to its end
    assert box.claim() == []
    clock.now += 30
    (lease,) = box.claim()
    assert [e.key for e in lease.entries] == ["a2"]
    expired = box.entries(status=DeliveryStatus.EXPIRED)
    assert [(e.key, e.expires_at, e.attempts) for e in expired] == [("a1", 1_000_010.0, 1)]
    assert expired[0].detail == "expired before it could be delivered"
    assert box.counts()[DeliveryStatus.EXPIRED] == 1


def test_an_outbox_from_before_expiry_and_bodies_opens_and_keeps_its_messages(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(_SCHEMA.replace(",\n    expires_at REAL,\n    body BLOB", ""))
    old.execute(
        "INSERT INTO entries (key, channel, recipient, grp, payload, status, created_at, "
        "not_before, next_at) VALUES ('k', 'webhook', 'ann', '', '{}', 'pending', 1, 1, 1)"
    )
    old.commit()
    old.close()
    box = _box(path, Clock())
    assert [(e.key, e.expires_at, e.body) for e in box.entries()] == [("k", None, None)]
    assert [e.key for e in box.claim()[0].entries] == ["k"]


def test_a_body_is_stored_once_and_leased_byte_for_byte(tmp_path: Path) -> None:
    body = b'{"id":"c1"}\x00\xff\n'  # any bytes, not only text
    box = _box(tmp_path / "o.db", Clock())
    box.enqueue([_msg("a", body=body), _msg("b")])
    box.close()
    again = _box(tmp_path / "o.db", Clock())
    (lease_a,) = [lease for lease in again.claim() if lease.recipient == "ann"]
    assert [(e.key, e.body) for e in lease_a.entries] == [("a", body)]
    assert [(e.key, e.body) for e in again.entries() if e.key == "b"] == [("b", None)]


def test_a_restarted_owner_marks_its_attempts_interrupted(tmp_path: Path) -> None:
    clock = Clock()
    box = _box(tmp_path / "o.db", clock)
    box.enqueue([_msg("a1")])
    box.claim()
    box.close()
    again = _box(tmp_path / "o.db", clock)
    assert again.attempt_counts()[Result.INTERRUPTED] == 1
    (lease,) = again.claim()
    assert lease.entries[0].attempts == 2
    again.settle(lease, Outcome.delivered())
    assert [a.result for a in again.attempts("a1")] == [Result.INTERRUPTED, Result.DELIVERED]


def test_another_owners_lease_expires(tmp_path: Path) -> None:
    clock = Clock()
    one = Outbox(tmp_path / "o.db", owner="one", clock=clock, lease_s=30)
    two = Outbox(tmp_path / "o.db", owner="two", clock=clock, lease_s=30)
    one.enqueue([_msg("a1")])
    assert len(one.claim()) == 1
    assert two.claim() == []
    clock.now += 31
    (lease,) = two.claim()
    two.settle(lease, Outcome.delivered())
    stale = one.entries()[0]
    assert stale.status is DeliveryStatus.DELIVERED
    assert [a.owner for a in two.attempts("a1")] == ["one", "two"]


_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from safecity.outbox import Message, Outbox
    box = Outbox(Path(sys.argv[1]), owner="child")
    i = 0
    while True:
        box.enqueue([Message(f"k{i}", "webhook", f"r{i % 7}", {"i": i})])
        print(i, flush=True)
        lease = box.claim(lanes=1)
        i += 1
    """
)


def test_kill_9_loses_no_enqueued_message(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    confirmed = -1

    def past_200() -> bool:
        nonlocal confirmed
        assert child.stdout is not None
        confirmed = int(child.stdout.readline())
        return confirmed >= 200

    try:
        wait_for(past_200, 60, "200 enqueues confirmed by the child", interval=0)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert confirmed >= 200
    box = Outbox(path, owner="child")
    keys = {e.key for e in box.entries(limit=100_000)}
    assert {f"k{i}" for i in range(confirmed + 1)} <= keys
    leased = box.attempt_counts()[Result.INTERRUPTED]
    assert 1 <= leased <= 7  # one lease per lane at most, all released
    assert len(box.claim(lanes=100)) == 7


@settings(max_examples=20, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.integers(0, 3), st.sampled_from(["ok", "retry"])),
        min_size=1,
        max_size=30,
    )
)
def test_each_lane_delivers_in_its_order(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int, str]]
) -> None:
    path = tmp_path_factory.mktemp("box") / "o.db"
    clock = Clock()
    box = _box(path, clock, backoff=Backoff(base=1.0, cap=1.0), max_attempts=10_000)
    expected: dict[str, list[tuple[int, int]]] = {}
    for i, (lane, delay, _) in enumerate(ops):
        box.enqueue([_msg(f"m{i}", lane, not_before=clock.now + delay)])
        expected.setdefault(lane, []).append((delay, i))
    delivered: dict[str, list[str]] = {}
    verdicts = iter([op[2] for op in ops] * 3)
    for _ in range(150):
        clock.now += 0.5
        for lease in box.claim(per_lane=2):
            if next(verdicts, "ok") == "ok":
                box.settle(lease, Outcome.delivered())
                delivered.setdefault(lease.recipient, []).extend(e.key for e in lease.entries)
            else:
                box.settle(lease, Outcome.retry("down"))
    for lane, items in expected.items():
        assert delivered[lane] == [f"m{i}" for _, i in sorted(items)]
