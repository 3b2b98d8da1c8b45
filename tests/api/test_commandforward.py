"""The forwarder's paths are exactly the command routes' (the scaled replicas pass on all
of them and nothing else; the real forwarding: tests/api/test_api_commands.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.routing import APIRoute

from api.app import create_app
from api.commandforward import COMMAND_PATH
from api.routes import commands
from api.settings import ApiSettings
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
