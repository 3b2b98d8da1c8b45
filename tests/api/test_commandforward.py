"""The forwarder's paths are exactly the command routes' (the scaled replicas pass on all
of them and nothing else; the real forwarding: tests/api/test_api_commands.py), and the
caller a replica vouches for reaches the owner as it was admitted, or not at all."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from hypothesis import given
from hypothesis import strategies as st

from api.apikeys import ApiKey
from api.app import create_app
from api.commandforward import COMMAND_PATH
from api.commandhop import CALLER_HEADER, SIGNATURE_HEADER, HopError, HopVerifier, open_hop, vouch
from api.people import Person
from api.routes import commands
from api.settings import ApiSettings, CommandSettings
from safecity.errors import ConfigError
from safecity.registry import default_city


def _sample(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x-1", path)


def test_the_forwarded_paths_are_the_command_routes_and_only_they(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAFECITY_HOME", str(tmp_path))
    paths = create_app(ApiSettings(), default_city()).openapi()["paths"]
    tagged = {
        path: any("commands" in op.get("tags", []) for op in operations.values())
        for path, operations in paths.items()
    }
    own = {path for path, is_command in tagged.items() if is_command}
    assert own == {r.path for r in commands.router.routes if isinstance(r, APIRoute)}
    assert all(COMMAND_PATH.match(_sample(path)) for path in own)
    others = [_sample(path) for path, is_command in tagged.items() if not is_command]
    assert len(others) > 20 and not [p for p in others if COMMAND_PATH.match(p)]
    # A path one level off is not a command route.
    for path in ("/v1/commands/a/b", "/v1/devices/x/commands/y", "/v1/devices/commands"):
        assert COMMAND_PATH.match(path) is None


def test_a_replica_without_the_command_hop_key_does_not_start(tmp_path: Path) -> None:
    missing = tmp_path / "hop.key"
    replica = ApiSettings(commands={"url": "http://owner:8000"}, command_hop_key_file=missing)
    with pytest.raises(ConfigError, match=f"command hop key {missing}: cannot read it"):
        open_hop(replica)
    # The owner makes it (0600) and checks with it; the replica then signs with the same.
    key, verifier = open_hop(replica.model_copy(update={"commands": CommandSettings()}))
    assert key is None and verifier is not None and missing.stat().st_mode & 0o777 == 0o600
    assert open_hop(replica) == (verifier.key, None)


@given(caller=st.text(max_size=300), signature=st.text(max_size=300) | st.none())
def test_any_vouched_header_is_a_caller_or_a_reasoned_refusal(
    caller: str, signature: str | None
) -> None:
    verifier = HopVerifier(b"k" * 32)
    with pytest.raises(HopError) as refused:
        verifier.verify("GET", "/v1/commands", "", b"", caller, signature)
    assert refused.value.status in (401, 403) and refused.value.reason


@given(
    scopes=st.lists(st.sampled_from(["read", "operate", "admin"]), max_size=3),
    cities=st.lists(st.from_regex(r"[a-z]{1,8}", fullmatch=True), max_size=3),
    name=st.text(max_size=40),
)
def test_a_vouched_caller_arrives_as_it_was_admitted(
    scopes: list[str], cities: list[str], name: str
) -> None:
    key = ApiKey("k1", "key", tuple(scopes), "", "", None, tuple(cities))
    person = Person("p1", name, tuple(scopes), "", "", None, tuple(cities), "sub-1", name)
    verifier = HopVerifier(b"k" * 32)
    for record in (key, person):
        signed = vouch(b"k" * 32, "POST", "/v1/commands", "b=2&a=1", b"{}", record)
        got = verifier.verify(
            "POST", "/v1/commands", "a=1&b=2", b"{}",
            signed[CALLER_HEADER], signed[SIGNATURE_HEADER],
        )  # fmt: skip
        assert got == record and type(got) is type(record)
