"""The board against the plain definition: what InfluxDB answers over all points written."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from safecity.board import Board
from safecity.lineprotocol import Point

CITY = "tashkent"
FIELDS = {"noise": ("laeq",)}
KEEP = 10_000
DEVICES = ("n-1", "n-2", "s-1")

times = st.integers(0, 20_000)
noise = st.tuples(st.just("noise"), st.sampled_from(DEVICES[:2]), times, st.floats(30, 90))
light = st.tuples(
    st.just("streetlight"),
    st.just("s-1"),
    times,
    st.tuples(st.sampled_from(["on", "off"]), st.sampled_from(["ok", "broken_lantern"])),
)
status = st.tuples(
    st.just("device_status"),
    st.sampled_from(DEVICES),
    times,
    st.sampled_from(["online", "offline"]),
)
writes = st.lists(st.one_of(noise, light, status), max_size=60)


def point(write: tuple[str, str, int, object]) -> Point:
    measurement, device, at, value = write
    if measurement == "noise":
        fields: dict[str, object] = {"seq": at, "laeq": value}
    elif measurement == "streetlight":
        assert isinstance(value, tuple)
        fields = {"seq": at, "power_state": value[0], "status": value[1]}
    else:
        fields = {"state": value}
    tags = {"city": CITY, "district": "d", "device_id": device}
    return Point(measurement, tags, fields, at)  # type: ignore[arg-type]


def newest(writes: list[tuple[str, str, int, object]], measurements: set[str], span: range) -> dict:
    """device -> (time, value) of its newest write in `span`, the last written winning."""
    out: dict[str, tuple[int, object]] = {}
    for measurement, device, at, value in writes:
        newer = device not in out or at >= out[device][0]
        if measurement in measurements and at in span and newer:
            out[device] = (at, value)
    return out


@settings(max_examples=300, deadline=None)
@given(writes, writes, st.integers(0, 20_000), st.integers(1, 8_000), st.integers(0, 20_000))
def test_parts_equal_the_definition_over_every_write(
    seeded: list, announced: list, end: int, length: int, lookback: int
) -> None:
    """Seed, then announcements (some again: redeliveries), out of order; the means over
    [end - length, end), each light's and device's newest before `end`, equal the plain
    computation over every write in which a later write of the same time overwrites."""
    board = Board(CITY, FIELDS, KEEP)
    board.apply(map(point, seeded))
    board.ready(0, 0)
    # A message redelivered to the ingest is written again, then announced again: InfluxDB
    # and the board both take the repeat last, over whatever else was written at its time.
    writes_after_seed = announced + announced[:3]
    board.apply(map(point, writes_after_seed))
    every = seeded + writes_after_seed
    start, light_from, since = end - length, end - 2 * length, end - lookback
    parts = board.parts(start, end, light_from, since)

    for device in DEVICES[:2]:
        # The last write of a time is the one InfluxDB keeps.
        kept = {at: v for m, d, at, v in every if m == "noise" and d == device}
        window = [v for at, v in sorted(kept.items()) if start <= at < end]
        got = parts.means["noise"].get(device, {}).get("laeq")
        if window:
            assert got is not None and abs(got - sum(window) / len(window)) < 1e-9
        else:
            assert got is None
    lights = newest(every, {"streetlight"}, range(light_from, end))
    assert parts.lights == {d: v for d, (_, v) in lights.items()}
    seen = newest(every, {"noise", "streetlight"}, range(since, end))
    assert parts.last_seen == {d: at for d, (at, _) in seen.items()}
    statuses = newest(every, {"device_status"}, range(since, end))
    assert parts.status == statuses
    held = {(m, d, at) for m, d, at, _ in every if m in ("noise", "streetlight")}
    assert board.points() == len(held)  # one value a device, field and time


@settings(max_examples=100, deadline=None)
@given(writes, st.integers(0, 20_000))
def test_pruning_keeps_every_answer_from_the_floor_on(all_writes: list, now: int) -> None:
    """Pruned at `now`, the board answers every window from its new floor as before, and
    no longer claims to cover one that starts below it."""
    pruned, whole = Board(CITY, FIELDS, KEEP), Board(CITY, FIELDS, KEEP)
    for board in (pruned, whole):
        board.apply(map(point, all_writes))
        board.ready(0, 0)
    pruned.prune(now)
    floor = max(0, now - KEEP)
    assert pruned.covers(floor, now)
    if floor > 0:
        assert not pruned.covers(floor - 1, now)
    for end in (floor, now, now + 5_000):
        args = (max(floor, end - 900), end, max(floor, end - 1_800), 0)
        assert pruned.parts(*args) == whole.parts(*args)
