"""Scale-out: three ingest workers on one shared subscription split the load, losing nothing."""

from __future__ import annotations

from pathlib import Path

from faults import Ingest, check, new_db
from ledgerpub import LedgerPublisher, good_readings
from support import wait_for

from control.stack import LocalStack
from safecity.registry import default_city

CITY = default_city()


def test_three_workers_share_the_load_and_lose_nothing(stack: LocalStack, tmp_path: Path) -> None:
    db = new_db(stack)
    group = f"g-{db}"
    workers = [
        Ingest(stack, db, tmp_path / f"w{i}", f"{db}-{i}", SAFECITY_SHARE_GROUP=group)
        for i in range(3)
    ]
    try:
        for worker in workers:
            worker.start()
        publisher = LedgerPublisher(stack.mqtt_settings("_simulator"), tmp_path / "ledger.jsonl")
        publisher.run(good_readings(CITY, 6000, devices=120))

        report = {}

        def all_stored() -> bool:
            report["r"] = check(
                stack, db, publisher.ledger_path, *(w.deadletter_dir for w in workers)
            )
            return not report["r"].lost

        wait_for(all_stored, 60, "every acknowledged reading in InfluxDB")
        r = report["r"]
        assert r.acknowledged == r.sent == 6000
        assert r.lost == []
        assert r.duplicated == []
        assert r.unexpected == []
        assert r.value_mismatch == []
        assert r.stored == r.good == 6000
        # The broker split the stream: every worker took a real share of it.
        received = [w.metric("safecity_ingest_received_total") for w in workers]
        assert sum(received) == 6000
        assert min(received) >= 6000 / 3 * 0.5, received
    finally:
        for worker in workers:
            worker.stop()
