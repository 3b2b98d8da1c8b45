"""Fuzzing the edge agent's spool records: a damaged log never stops the agent from starting,
and every good record around the damage replays (never raises, always an outcome)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from devicebytes import FUZZ, JSON_TEXT, PAYLOADS, TOPICS
from hypothesis import given
from hypothesis import strategies as st

from edge.spool import DeviceSpool

DAMAGE = st.one_of(
    JSON_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=80).map(lambda b: b.replace(b"\n", b"")),
    st.sampled_from(
        [b"[]", b"null", b'{"i":-1,"t":"t","p":"","m":0,"s":null,"c":""}',
         b'{"i":0,"t":1,"p":"","m":0,"s":null,"c":""}', b'{"i":1e400}',
         b'{"i":7,"t":"t","p":"!!notbase64","m":0,"s":null,"c":""}',
         b'{"d":[[0,100000000000000]]}', b'{"d":[["a",1]]}', b'{"d":5}', b'{"d":[[1]]}',
         b'{"i":9,"t":"t","p":"","m":0,"s":"x","c":""}', b"[" * 3000 + b"]" * 3000]
    ),
)  # fmt: skip


@FUZZ
@given(
    messages=st.lists(st.tuples(TOPICS, PAYLOADS, st.none() | st.integers(0, 2**63 - 1)),
                      min_size=1, max_size=6),
    damage=st.lists(st.tuples(st.integers(0, 6), DAMAGE), max_size=4),
    torn=st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")),
)  # fmt: skip
def test_a_damaged_spool_log_replays_every_good_record(
    messages: list[tuple[str, bytes, int | None]], damage: list[tuple[int, bytes]], torn: bytes
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "device.spool"
        spool = DeviceSpool(path, 1 << 22)
        for n, (topic, payload, seq) in enumerate(messages):
            assert spool.append(topic, payload, {"n": n}, seq, "telemetry") is not None
        spool.close()  # unsettled: the log stays
        lines = path.read_bytes().splitlines(keepends=True)
        for where, junk in damage:
            lines.insert(min(where, len(lines)), junk + b"\n")
        path.write_bytes(b"".join(lines) + torn)
        again = DeviceSpool(path, 1 << 22)  # never raises
        taken = again.take(100)
        good = {n: (t, p) for n, (t, p, _) in enumerate(messages)}
        for item in taken:  # only what was appended, as appended
            if isinstance(item.meta, dict) and item.meta.get("n") in good:
                assert (item.topic, item.payload) == good[item.meta["n"]]
        settles = any(b'"d"' in junk for _, junk in damage)
        if not settles:  # nothing could have settled them: every good record is back
            assert {i.meta["n"] for i in taken if isinstance(i.meta, dict)} >= set(good)
        again.close()
