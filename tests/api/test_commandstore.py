"""The durable command store: atomic creation, idempotency keys, forward-only statuses,
honest expiry, and everything still there after the file is opened again; what it holds
pending becomes one outbox message per device, handed over once."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from api.commanding import CHANNEL, CommandService, open_outbox, outbox_messages
from api.commandstore import CommandStore, StoredCommand, Target
from api.settings import ApiSettings
from safecity.commands import CommandStatus, parse_command
from safecity.outbox import Outbox
from safecity.readings import epoch_ms
from safecity.registry import as_cities, default_city

T0 = 1_800_000_000_000
LIGHTS = [Target(f"light-{i}", "olmazor", "streetlight") for i in range(3)]


def command(key: str = "k", command_id: str = "cmd-00000000000000000001") -> StoredCommand:
    return StoredCommand(
        0, command_id, "tashkent", "set_level", {"level": 40},
        {"district": "olmazor", "kind": "streetlight"}, T0, T0 + 60_000, key, "key1",
    )  # fmt: skip


def test_create_is_atomic_and_idempotent_and_survives_reopening(tmp_path: Path) -> None:
    store = CommandStore(tmp_path / "c.sqlite3")
    stored, created = store.create(command(), LIGHTS, T0)
    assert created and stored.seq > 0
    again, created_again = store.create(command(command_id="cmd-00000000000000000002"), [], T0)
    assert not created_again and again.id == stored.id
    store.close()
    reopened = CommandStore(tmp_path / "c.sqlite3")
    found = reopened.get(stored.id)
    assert found is not None
    assert [d.status for d in found[1]] == [CommandStatus.PENDING] * 3
    assert [(c.id, len(ts)) for c, ts in reopened.pending(T0)] == [(stored.id, 3)]
    assert reopened.get("cmd-00000000000000000002") is None


def test_statuses_only_move_forward_and_final_ones_stay(tmp_path: Path) -> None:
    store = CommandStore(tmp_path / "c.sqlite3")
    stored, _ = store.create(command(), LIGHTS, T0)
    light = LIGHTS[0].device_id
    assert store.settle(stored.id, light, CommandStatus.DELIVERED, None, T0 + 1)
    assert not store.settle(stored.id, light, CommandStatus.PENDING, None, T0 + 2)
    assert store.settle(stored.id, light, CommandStatus.FAILED, "lamp\x00 broken", T0 + 3)
    assert not store.settle(stored.id, light, CommandStatus.EXECUTED, None, T0 + 4)
    assert not store.settle(stored.id, "someone-else", CommandStatus.EXECUTED, None, T0 + 4)
    found = store.get(stored.id)
    assert found is not None
    first = found[1][0]
    assert (first.status, first.reason) == (CommandStatus.FAILED, "lamp? broken")


def test_pending_is_what_still_waits_and_expiry_is_honest(tmp_path: Path) -> None:
    store = CommandStore(tmp_path / "c.sqlite3")
    stored, _ = store.create(command(), LIGHTS, T0)
    a, b, c = (t.device_id for t in LIGHTS)
    store.settle(stored.id, a, CommandStatus.DELIVERED, None, T0 + 10)
    assert [[t.device_id for t in ts] for _, ts in store.pending(T0 + 10)] == [[b, c]]
    # After the expiry: what never arrived is expired; nothing waits any more.
    assert store.pending(T0 + 60_000) == []
    assert store.expire(T0 + 60_000, result_grace_ms=30_000) == 2
    found = store.get(stored.id)
    assert found is not None
    statuses = {d.device_id: d.status for d in found[1]}
    assert statuses == {a: CommandStatus.DELIVERED, b: CommandStatus.EXPIRED,
                        c: CommandStatus.EXPIRED}  # fmt: skip
    # Delivered but silent past the grace: failed, with the reason.
    assert store.expire(T0 + 90_000, result_grace_ms=30_000) == 1
    found = store.get(stored.id)
    assert found is not None
    assert found[1][0].status is CommandStatus.FAILED
    assert found[1][0].reason == "delivered, but the device reported no outcome"
    assert store.counts() == {"expired": 2, "failed": 1}


def test_each_device_gets_one_outbox_message_on_its_topic_once(tmp_path: Path) -> None:
    store = CommandStore(tmp_path / "c.sqlite3")
    stored, _ = store.create(command(), LIGHTS, T0)
    box = Outbox(tmp_path / "o.sqlite3")
    messages = outbox_messages(stored, LIGHTS)
    assert box.enqueue(messages) == 3
    # Handed over again (a restart after a crash): the outbox holds them already.
    assert sum(box.enqueue(outbox_messages(c, ts)) for c, ts in store.pending(T0)) == 0
    entries = box.entries()
    assert [(e.key, e.recipient) for e in entries] == [
        (
            f"{stored.id}/{t.device_id}",
            f"safecity/v1/tashkent/olmazor/streetlight/{t.device_id}/cmd",
        )
        for t in LIGHTS
    ]
    assert {(e.channel, e.group, e.expires_at) for e in entries} == {
        (CHANNEL, stored.id, (T0 + 60_000) / 1000)
    }
    # The wire bytes, encoded once, are what every device's copy carries (and is sent).
    bodies = {e.body for e in entries}
    assert len(bodies) == 1 and None not in bodies
    wire = parse_command(entries[0].body or b"")
    assert (wire.id, wire.name, wire.params, wire.idempotency_key) == (
        stored.id, "set_level", {"level": 40}, "k",
    )  # fmt: skip
    assert {tuple(e.payload.items()) for e in entries} == {(("command_id", stored.id),)}


def test_pages_are_newest_first_per_city(tmp_path: Path) -> None:
    store = CommandStore(tmp_path / "c.sqlite3")
    ids = [f"cmd-{i:020d}" for i in range(5)]
    for i, cid in enumerate(ids):
        store.create(command(key=f"k{i}", command_id=cid), LIGHTS[:1], T0)
    first = store.page(["tashkent"], None, 2)
    assert [c.id for c, _ in first] == [ids[4], ids[3]]
    second = store.page(["tashkent"], first[-1][0].seq, 10)
    assert [c.id for c, _ in second] == [ids[2], ids[1], ids[0]]
    assert store.page(["almaty"], None, 10) == []


def test_what_a_crash_left_in_the_store_alone_is_handed_to_the_outbox_at_start(
    tmp_path: Path,
) -> None:
    settings = ApiSettings(commands_file=tmp_path / "commands.sqlite3")
    store = CommandStore(settings.commands_file)
    now = epoch_ms(datetime.now(UTC))
    live = replace(command(key="live"), issued_ms=now, expires_ms=now + 60_000)
    late = replace(command(key="late", command_id="cmd-00000000000000000002"),
                   issued_ms=now - 120_000, expires_ms=now - 60_000)  # fmt: skip
    for stored in (live, late):
        store.create(stored, LIGHTS, now)  # the API died before the outbox had them
    store.settle(live.id, LIGHTS[0].device_id, CommandStatus.DELIVERED, None, now)

    def no_influx(city: str) -> Any:
        raise AssertionError(city)

    service = CommandService(
        settings, store, open_outbox(settings), as_cities(default_city()), no_influx
    )
    # The unexpired command's devices still pending, once; nothing of the expired one.
    assert service.recover() == 2
    assert service.recover() == 0
    keys = [e.key for e in service.outbox.entries()]
    assert keys == [f"{live.id}/{t.device_id}" for t in LIGHTS[1:]]
    assert service.outbox.path == tmp_path / "commands.outbox.sqlite3"
