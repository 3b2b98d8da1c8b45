"""Fuzzing the alerts service's reading of device messages: any topic and payload gives an
outcome (signals, or a counted skip) and never an exception."""

from __future__ import annotations

import asyncio

from devicebytes import EVENTS, FUZZ, PAYLOADS, TOPICS
from hypothesis import given
from hypothesis import strategies as st

from alerts.batch import AlertBatcher
from alerts.book import Book
from alerts.engine import Clear, Engine, Signal
from alerts.rules import load_for
from alerts.settings import AlertsSettings
from safecity.mqtt import Incoming
from safecity.registry import default_city

CITY = default_city()
BATCHER = AlertBatcher(
    AlertsSettings(),
    CITY,
    Engine(load_for(CITY.id), CITY),
    Book(CITY.id),
    None,  # type: ignore[arg-type]  # the store: evaluation never touches it
    None,  # type: ignore[arg-type]  # the broker client: likewise
    asyncio.Lock(),
)


@FUZZ
@given(message=st.one_of(st.tuples(TOPICS, PAYLOADS), EVENTS), duplicate=st.booleans())
def test_any_device_message_is_evaluated_or_skipped(
    message: tuple[str, bytes], duplicate: bool
) -> None:
    topic, payload = message
    changes = BATCHER._evaluate(Incoming(topic, payload, 1, 1, False, duplicate, 0))
    assert all(isinstance(c, Signal | Clear) for c in changes)
