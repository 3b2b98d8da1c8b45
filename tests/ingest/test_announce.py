"""The announcements of written lines: split to fit the broker's packet limit, nothing lost."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ingest.announce import Announcer, bodies
from safecity import topics

lines = st.lists(st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=300))


@given(lines, st.integers(300, 2000))
def test_bodies_fit_and_hold_every_line_in_order(given_lines: list[str], max_body: int) -> None:
    out = list(bodies(given_lines, max_body))
    assert all(len(body) <= max_body for body in out)
    joined = [line for body in out for line in body.decode().split("\n")]
    assert joined == given_lines


def test_only_readings_and_statuses_of_served_cities_are_announced() -> None:
    sent: list[tuple[str, bytes]] = []
    announce = Announcer(lambda t, b: sent.append((t, b)), ["tashkent", "samarkand"], "w-1", 16384)
    written = [
        "noise,city=tashkent,district=d,device_id=n-1 seq=1i,laeq=50.5 1000",
        'device_status,city=samarkand,district=d,device_id=n-2 state="offline" 1000',
        "events,city=tashkent,district=d,device_id=n-1 seq=2i 1000000000",
        "security_events,city=tashkent,device_id=n-1 n=1i 1000",
        "noise,city=bukhara,district=d,device_id=n-9 seq=1i,laeq=50.5 1000",
    ]
    announce(written)
    assert sorted(sent) == [
        (topics.stored_topic("samarkand", "w-1"), written[1].encode()),
        (topics.stored_topic("tashkent", "w-1"), written[0].encode()),
    ]
