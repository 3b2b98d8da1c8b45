"""Settings: defaults, SAFECITY_ environment overrides (nested with __), and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from api.settings import ApiSettings
from control.settings import StackSettings
from ingest.settings import IngestSettings
from safecity.settings import InfluxSettings, MqttSettings
from simulators.settings import SimulatorSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SAFECITY_ variable from the outside, and no .env file in the working directory."""
    import os

    for key in list(os.environ):
        if key.startswith("SAFECITY_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    settings = IngestSettings()
    assert settings.mqtt == MqttSettings()
    assert settings.mqtt.host == "127.0.0.1"
    assert settings.mqtt.port == 1883
    assert settings.influx.url == "http://127.0.0.1:8086"
    assert settings.influx.database == "safecity"
    assert settings.influx.retention_policy == "raw"
    assert settings.worker_id == "ingest-0"
    assert settings.registry == ()
    assert ApiSettings().port == 8000
    assert SimulatorSettings().speed == 1.0
    assert StackSettings().mqtt_port == 1883


def test_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFECITY_MQTT__PORT", "1999")
    monkeypatch.setenv("SAFECITY_MQTT__HOST", "broker.local")
    monkeypatch.setenv("SAFECITY_INFLUX__URL", "http://influx.local:9999")
    monkeypatch.setenv("SAFECITY_INFLUX__DATABASE", "city_a")
    monkeypatch.setenv("SAFECITY_INFLUX__GZIP", "false")
    monkeypatch.setenv("SAFECITY_WORKER_ID", "ingest-7")
    monkeypatch.setenv("SAFECITY_REGISTRY", "/srv/almaty.jsonl")
    settings = IngestSettings()
    assert settings.mqtt.port == 1999
    assert settings.mqtt.host == "broker.local"
    assert settings.influx.url == "http://influx.local:9999"
    assert settings.influx.database == "city_a"
    assert settings.influx.gzip is False
    assert settings.worker_id == "ingest-7"
    assert settings.registry == (Path("/srv/almaty.jsonl"),)
    # Unset nested values keep their defaults.
    assert settings.influx.retention_policy == "raw"
    assert settings.mqtt.keepalive == 30


def test_env_applies_to_every_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFECITY_INFLUX__URL", "http://influx.local:9999")
    monkeypatch.setenv("SAFECITY_MQTT__PORT", "1999")
    assert ApiSettings().influx.url == "http://influx.local:9999"
    assert SimulatorSettings().mqtt.port == 1999


def test_secrets_stay_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFECITY_INFLUX__PASSWORD", "hunter2")
    monkeypatch.setenv("SAFECITY_MQTT__PASSWORD", "hunter3")
    settings = IngestSettings()
    assert settings.influx.password is not None
    assert settings.influx.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings)
    assert "hunter3" not in repr(settings)


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SAFECITY_MQTT__PORT=2883\nSAFECITY_WORKER_ID=ingest-9\n")
    settings = IngestSettings()
    assert settings.mqtt.port == 2883
    assert settings.worker_id == "ingest-9"


def test_environment_beats_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SAFECITY_MQTT__PORT=2883\n")
    monkeypatch.setenv("SAFECITY_MQTT__PORT", "1999")
    assert IngestSettings().mqtt.port == 1999


def test_explicit_arguments_beat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFECITY_WORKER_ID", "ingest-7")
    assert IngestSettings(worker_id="ingest-3").worker_id == "ingest-3"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("SAFECITY_MQTT__PORT", "abc"),
        ("SAFECITY_MQTT__PORT", "0"),
        ("SAFECITY_MQTT__PORT", "65536"),
        ("SAFECITY_MQTT__KEEPALIVE", "1"),
        ("SAFECITY_WORKER_ID", "Ingest 1"),
        ("SAFECITY_WORKER_ID", "a/b"),
        ("SAFECITY_WORKER_ID", ""),
        ("SAFECITY_SHARE_GROUP", "#"),
        ("SAFECITY_INFLUX__DATABASE", 'x"; DROP DATABASE y'),
        ("SAFECITY_INFLUX__RETENTION_POLICY", "Raw Data"),
        ("SAFECITY_INFLUX__RETENTION_DURATION", "30 days"),
        ("SAFECITY_INFLUX__RETENTION_DURATION", "0d"),
        ("SAFECITY_INFLUX__TIMEOUT", "0"),
        ("SAFECITY_INFLUX__GZIP", "maybe"),
        ("SAFECITY_BATCH_SIZE", "0"),
        ("SAFECITY_FLUSH_INTERVAL", "-1"),
        ("SAFECITY_MQTT__NO_SUCH_FIELD", "1"),
    ],
)
def test_invalid_env_values_raise(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError):
        IngestSettings()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"speed": 0},
        {"speed": -1},
        {"speed": 10_001},
        {"client_id": "Sim"},
        {"max_devices": 0},
        {"duration": 0},
    ],
)
def test_invalid_simulator_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SimulatorSettings(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("duration", ["INF", "30d", "12h", "4w", "1h"])
def test_retention_durations_accepted(duration: str) -> None:
    assert InfluxSettings(retention_duration=duration).retention_duration == duration


def test_settings_are_frozen() -> None:
    settings = IngestSettings()
    with pytest.raises(ValidationError):
        settings.worker_id = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        settings.mqtt.port = 1  # type: ignore[misc]
