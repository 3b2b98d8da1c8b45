"""`.env.example` copied to `.env` unchanged runs every service as its defaults do."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from control import envexample
from ingest.settings import IngestSettings


@pytest.fixture
def example_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory whose .env is the generated example; no SAFECITY_ variable set."""
    for name in list(os.environ):
        if name.startswith("SAFECITY_"):
            monkeypatch.delenv(name)
    (tmp_path / ".env").write_text(envexample.render(), encoding="utf-8")
    return tmp_path


def test_every_settings_class_reads_the_example_as_its_defaults(
    example_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    bare = tmp_path_factory.mktemp("no-env")
    for _, cls, _ in envexample.SERVICES:
        monkeypatch.chdir(bare)
        defaults = cls()
        monkeypatch.chdir(example_env)
        assert cls() == defaults, cls.__name__


def test_an_empty_value_means_unset_except_for_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("SAFECITY_"):
            monkeypatch.delenv(name)
    (tmp_path / ".env").write_text(
        "SAFECITY_MQTT__TLS_CA=\nSAFECITY_SPOOL_DIR=\nSAFECITY_DEDUP_WINDOW=\n", encoding="utf-8"
    )
    monkeypatch.setenv("SAFECITY_BROKER_LOG", "")
    monkeypatch.setenv("SAFECITY_SHARE_GROUP", "")
    settings = IngestSettings()
    assert settings.mqtt.tls_ca is None  # was Path("."): IsADirectoryError at connect
    assert settings.spool_dir == Path("var/stack/spool")  # in the default instance
    assert settings.dedup_window == IngestSettings.model_fields["dedup_window"].default
    assert settings.broker_log is None
    assert settings.share_group == ""  # a text setting: empty = a plain subscription


def test_services_start_from_a_copied_env_example(
    example_env: Path,
    influx_db: str,
    start_ingest: Callable[..., Any],
    start_api: Callable[..., Any],
    start_alerts: Callable[..., Any],
) -> None:
    # The launcher runs each child in this test's tmp dir, where .env is the example;
    # the environment only says where the test's broker and database are.
    assert example_env.joinpath(".env").is_file()
    ingest = start_ingest(influx_db)
    api = start_api(influx_db)
    alerts = start_alerts(influx_db)
    for service in (ingest, api, alerts):
        assert service.process.alive
    with httpx.Client(timeout=10) as client:
        assert client.get(f"{ingest.metrics_url}/readyz").status_code == 200
        assert client.get(f"{alerts.metrics_url}/readyz").status_code == 200
        me = client.get(f"{api.url}/v1/me", headers=api.headers)
        assert me.status_code == 200 and me.json()["name"] == "tests"
    # Relative paths of the example resolve in the working directory, not the checkout.
    assert (example_env / "var" / "stack" / "spool").is_dir()
