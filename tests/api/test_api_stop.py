"""An in-process API whose broker cannot answer leaves nothing behind once stopped: no MQTT
network thread of its command service or step announcer goes on reconnecting (and
logging) after the app is gone."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

from fastapi.testclient import TestClient
from support import wait_for

from api.app import create_app
from api.lifecycle import step_message
from api.settings import ApiSettings
from control.stack import Mosquitto
from safecity import incidents as inc
from safecity.outbox import Outbox
from safecity.registry import City


def _paho_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("paho-mqtt-client-")}


def _left_unannounced(path: Path) -> None:
    """A step a previous run committed and never published (the announcer connects for it)."""
    t0 = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
    opened = inc.open_incident(
        city="tashkent", district="chilonzor", rule_id="gunshot", rule_type="event",
        severity="critical", place="chilonzor", devices=["gs-1"], opened_at=t0,
        value=1.0, message="Gunshot detected", event="gunshot",
    )  # fmt: skip
    box = Outbox(path, owner="previous-run")
    box.enqueue([step_message(opened)])
    box.close()


def test_an_app_whose_broker_hangs_leaves_no_thread_behind_when_stopped(
    api_settings: ApiSettings, city: City, own_broker: Mosquitto, tmp_path: Path
) -> None:
    """A paused broker takes TCP connections and never answers: the app is stopped while
    its command service, its announcer and its board feed wait for a CONNACK."""
    settings = api_settings.model_copy(
        update={
            "mqtt": own_broker.mqtt_settings("_api", connect_timeout=60.0),
            "commands_file": tmp_path / "commands.sqlite3",
            "steps_outbox_file": tmp_path / "steps.outbox.sqlite3",
        }
    )
    _left_unannounced(settings.steps_outbox_file)
    own_broker.pause()
    before = _paho_threads()
    with TestClient(create_app(settings, city)) as client:
        assert client.get("/healthz").status_code == 200
        connecting = wait_for(lambda: len(_paho_threads() - before) == 3 and _paho_threads(),
                              20, "commands, announcer and board connecting")  # fmt: skip
    assert "paho-mqtt-client-safecity-api-commands" in connecting
    assert any(t.startswith("paho-mqtt-client-safecity-api-board-") for t in connecting)
    assert _paho_threads() - before == set()
