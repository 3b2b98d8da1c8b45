"""The command contract: topics, messages and parameter checks agree with the catalogue;
nothing a device or client sends can crash a parser."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safecity import catalogue, topics
from safecity.commands import (
    Command,
    CommandResult,
    ResultStatus,
    markdown_table,
    new_command_id,
    parse_command,
    parse_result,
    validate_params,
)
from safecity.errors import CommandError, TopicError

identifiers = st.from_regex(r"\A[a-z0-9][a-z0-9_.-]{0,63}\Z")
TS = b"2026-03-10T18:00:00Z"
CID = b"cmd-0123456789abcdef0123"
NOW = datetime(2026, 3, 10, 18, 0, tzinfo=UTC)


@settings(max_examples=40)
@given(identifiers, identifiers, identifiers, identifiers)
def test_command_and_result_topics_round_trip(
    city: str, district: str, kind: str, dev: str
) -> None:
    cmd = topics.command_topic(city, district, kind, dev)
    res = topics.result_topic(city, district, kind, dev)
    assert cmd.endswith(f"/{dev}/cmd") and res.endswith(f"/{dev}/result")
    address = topics.DeviceAddress(city, district, kind, dev)
    assert topics.parse_command_topic(cmd) == address
    assert topics.parse_result_topic(res) == address
    # Neither parses as the other, nor as a telemetry topic.
    with pytest.raises(TopicError):
        topics.parse_command_topic(res)
    with pytest.raises(TopicError):
        topics.parse_result_topic(cmd)
    with pytest.raises(TopicError):
        topics.parse_device_topic(cmd)


@given(st.text(max_size=200))
def test_command_topic_parser_refuses_anything_else(text: str) -> None:
    try:
        parsed = topics.parse_command_topic(text)
    except TopicError:
        return
    assert topics.command_topic(parsed.city, parsed.district, parsed.kind, parsed.device_id) == text


@pytest.mark.parametrize("bad", ["+", "#", "a/b", "Dev", ""])
def test_command_topic_refuses_wildcards_and_bad_ids(bad: str) -> None:
    with pytest.raises(TopicError):
        topics.command_topic("tashkent", "olmazor", "streetlight", bad)
    assert topics.result_filter("tashkent") == "safecity/v1/tashkent/+/+/+/result"


def _command(**kw: object) -> Command:
    fields: dict[str, object] = {
        "id": new_command_id(),
        "name": "set_level",
        "params": {"level": 40},
        "issued_at": NOW,
        "expires_at": NOW + timedelta(minutes=5),
        "idempotency_key": "op-1",
    }
    fields.update(kw)
    return Command.model_validate(fields)


def test_command_and_result_round_trip_and_are_frozen() -> None:
    command = _command()
    assert parse_command(command.to_payload()) == command
    assert command.expired(NOW + timedelta(minutes=5)) and not command.expired(NOW)
    result = CommandResult(
        command_id=command.id, status=ResultStatus.FAILED, reason="lamp broken", ts=NOW
    )
    assert parse_result(result.to_payload()) == result
    with pytest.raises(Exception, match="frozen"):
        command.name = "reboot"  # type: ignore[misc]


@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_crash_the_parsers(data: bytes) -> None:
    for parser in (parse_command, parse_result):
        with contextlib.suppress(CommandError):
            parser(data)


@settings(max_examples=40)
@given(st.recursive(st.none() | st.integers() | st.text(max_size=5), lambda c: st.lists(c)))
def test_nested_json_is_a_command_error(value: object) -> None:
    import json

    with pytest.raises(CommandError):
        parse_command(json.dumps({"id": value}).encode())


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b'{"command_id": "cmd-0", "status": "executed", "ts": "' + TS + b'"}', "command_id"),
        (b'{"command_id": "' + CID + b'", "status": "done", "ts": "' + TS + b'"}', "status"),
        (b'{"command_id": "' + CID + b'", "status": "executed"}', "ts"),
        (b"x" * 9000, "at most"),
    ],
)
def test_bad_results_name_the_bad_field(payload: bytes, needle: str) -> None:
    with pytest.raises(CommandError, match=needle):
        parse_result(payload)


@given(st.integers(min_value=-1000, max_value=1000))
def test_set_level_bounds(level: int) -> None:
    if 0 <= level <= 100:
        assert validate_params("streetlight", "set_level", {"level": level}) == {"level": level}
    else:
        with pytest.raises(CommandError, match="out of bounds"):
            validate_params("streetlight", "set_level", {"level": level})


@pytest.mark.parametrize(
    ("kind", "name", "params", "needle"),
    [
        ("streetlight", "goto_preset", {"preset": 1}, "unknown command"),
        ("streetlight", "set_level", {}, "needs parameter 'level'"),
        ("streetlight", "set_level", {"level": 5, "x": 1}, "no parameter 'x'"),
        ("streetlight", "set_level", {"level": "5"}, "integer"),
        ("streetlight", "set_level", {"level": True}, "integer"),
        ("cctv", "goto_preset", {"preset": 0}, "out of bounds"),
        ("panic_button", "sound", {"signal": "siren", "duration_s": 121}, "out of bounds"),
        ("panic_button", "sound", {"signal": "horn", "duration_s": 5}, "one of"),
        ("weather", "set_interval", {"interval_s": 5}, "out of bounds"),
        ("nope", "reboot", {}, "unknown device kind"),
    ],
)
def test_bad_parameters_name_what_is_wrong(
    kind: str, name: str, params: dict[str, object], needle: str
) -> None:
    with pytest.raises(CommandError, match=needle):
        validate_params(kind, name, params)


def test_every_kind_reboots_and_sets_its_interval() -> None:
    for kind in catalogue.KINDS:
        known = catalogue.commands_of(kind)
        assert {"reboot", "set_interval"} <= set(known), kind
    assert validate_params("cctv", "goto_preset", {"preset": 3}) == {"preset": 3}
    assert catalogue.MAX_SOUND_S == 120
    sound = validate_params("panic_button", "sound", {"signal": "siren", "duration_s": 120})
    assert sound == {"signal": "siren", "duration_s": 120}


def test_catalogue_table_lists_every_command() -> None:
    table = markdown_table()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) == sum(len(catalogue.commands_of(k)) for k in catalogue.KINDS)
    assert "| `streetlight` | `set_level` | `level`: int 0..100 % |" in table
