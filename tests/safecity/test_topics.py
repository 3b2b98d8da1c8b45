"""The topic scheme: builders and parser agree, invalid identifiers never reach a topic."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safecity import topics
from safecity.errors import SafecityError, TopicError
from safecity.topics import Channel, DeviceTopic, PlatformTopic

# Identifiers as docs/contract.md fixes them: ^[a-z0-9][a-z0-9_.-]{0,63}$
identifiers = st.from_regex(r"\A[a-z0-9][a-z0-9_.-]{0,63}\Z")
channels = st.sampled_from(list(Channel))

INVALID = [
    pytest.param("Tashkent", id="upper-case"),
    pytest.param("tash+kent", id="plus"),
    pytest.param("+", id="plus-alone"),
    pytest.param("tash#", id="hash"),
    pytest.param("#", id="hash-alone"),
    pytest.param("a/b", id="slash"),
    pytest.param("", id="empty"),
    pytest.param("a" * 65, id="65-chars"),
    pytest.param("toshkent\u00e9", id="unicode"),
    pytest.param("\u0442\u0430\u0448\u043a\u0435\u043d\u0442", id="cyrillic"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("_alerts", id="leading-underscore"),
    pytest.param("-a", id="leading-dash"),
    pytest.param("a b", id="space"),
    pytest.param("a\n", id="trailing-newline"),
    pytest.param("$share", id="dollar"),
]


def test_identifier_limits() -> None:
    assert topics.validate_identifier("a" * 64) == "a" * 64
    assert topics.validate_identifier("0") == "0"
    assert topics.validate_identifier("a.b_c-9") == "a.b_c-9"


@given(identifiers, identifiers, identifiers, identifiers, channels)
def test_device_topic_round_trip(
    city: str, district: str, kind: str, device_id: str, channel: Channel
) -> None:
    topic = topics.device_topic(city, district, kind, device_id, channel)
    assert topic == f"safecity/v1/{city}/{district}/{kind}/{device_id}/{channel.value}"
    parsed = topics.parse(topic)
    assert parsed == DeviceTopic(city, district, kind, device_id, channel)
    assert topics.parse_device_topic(topic) == parsed
    assert str(parsed) == topic


@given(identifiers, identifiers, identifiers, identifiers)
def test_channel_builders_round_trip(city: str, district: str, kind: str, device_id: str) -> None:
    builders: dict[Channel, Callable[[str, str, str, str], str]] = {
        Channel.TELEMETRY: topics.telemetry_topic,
        Channel.EVENT: topics.event_topic,
        Channel.STATUS: topics.status_topic,
    }
    for channel, build in builders.items():
        parsed = topics.parse(build(city, district, kind, device_id))
        assert parsed == DeviceTopic(city, district, kind, device_id, channel)


@given(identifiers, identifiers)
def test_alert_topic_round_trip(city: str, severity: str) -> None:
    topic = topics.alert_topic(city, severity)
    assert topic == f"safecity/v1/{city}/_alerts/{severity}"
    parsed = topics.parse(topic)
    assert parsed == PlatformTopic(city, "_alerts", severity)
    assert str(parsed) == topic


@given(identifiers, identifiers)
def test_incident_topic_round_trip(city: str, state: str) -> None:
    topic = topics.incident_topic(city, state)
    assert topic == f"safecity/v1/{city}/_incidents/{state}"
    parsed = topics.parse(topic)
    assert parsed == PlatformTopic(city, "_incidents", state)
    assert str(parsed) == topic
    assert topics.incident_filter(city) == f"safecity/v1/{city}/_incidents/+"


@given(identifiers, identifiers)
def test_deadletter_topic_round_trip(city: str, reason: str) -> None:
    topic = topics.deadletter_topic(city, reason)
    assert topic == f"safecity/v1/{city}/_deadletter/{reason}"
    parsed = topics.parse(topic)
    assert parsed == PlatformTopic(city, "_deadletter", reason)
    assert str(parsed) == topic


@given(identifiers, identifiers)
def test_service_status_topic_round_trip(city: str, service_id: str) -> None:
    topic = topics.service_status_topic(city, service_id)
    assert topic == f"safecity/v1/{city}/_services/{service_id}"
    parsed = topics.parse(topic)
    assert parsed == PlatformTopic(city, "_services", service_id)
    assert str(parsed) == topic


def test_deadletter_of_unknown_city() -> None:
    assert (
        topics.deadletter_topic("_unknown", "schema") == "safecity/v1/_unknown/_deadletter/schema"
    )


def _builders(bad: str) -> list[tuple[str, Callable[[], str]]]:
    ok = "x1"
    return [
        ("device city", lambda: topics.device_topic(bad, ok, ok, ok, Channel.TELEMETRY)),
        ("device district", lambda: topics.device_topic(ok, bad, ok, ok, Channel.TELEMETRY)),
        ("device kind", lambda: topics.device_topic(ok, ok, bad, ok, Channel.TELEMETRY)),
        ("device id", lambda: topics.device_topic(ok, ok, ok, bad, Channel.TELEMETRY)),
        ("telemetry", lambda: topics.telemetry_topic(ok, ok, ok, bad)),
        ("event", lambda: topics.event_topic(ok, bad, ok, ok)),
        ("status", lambda: topics.status_topic(ok, ok, bad, ok)),
        ("alert city", lambda: topics.alert_topic(bad, ok)),
        ("alert severity", lambda: topics.alert_topic(ok, bad)),
        ("deadletter city", lambda: topics.deadletter_topic(bad, ok)),
        ("deadletter reason", lambda: topics.deadletter_topic(ok, bad)),
        ("service city", lambda: topics.service_status_topic(bad, ok)),
        ("service id", lambda: topics.service_status_topic(ok, bad)),
        ("device_filter city", lambda: topics.device_filter(Channel.TELEMETRY, bad)),
        ("deadletter_filter city", lambda: topics.deadletter_filter(bad)),
        ("alert_filter city", lambda: topics.alert_filter(bad)),
        ("shared group", lambda: topics.shared(bad, "safecity/v1/#")),
    ]


@pytest.mark.parametrize("bad", INVALID)
def test_invalid_identifier_refused_by_every_builder(bad: str) -> None:
    accepted = []
    for what, build in _builders(bad):
        with contextlib.suppress(TopicError):
            accepted.append((what, build()))
    assert accepted == []


@pytest.mark.parametrize("bad", INVALID)
def test_invalid_identifier_refused_by_parse(bad: str) -> None:
    candidates = [
        f"safecity/v1/{bad}/d/k/dev/telemetry",
        f"safecity/v1/c/{bad}/k/dev/telemetry",
        f"safecity/v1/c/d/{bad}/dev/event",
        f"safecity/v1/c/d/k/{bad}/status",
        f"safecity/v1/{bad}/_alerts/high",
        f"safecity/v1/c/_alerts/{bad}",
        f"safecity/v1/c/_deadletter/{bad}",
        f"safecity/v1/c/_services/{bad}",
    ]
    accepted = []
    for topic in candidates:
        with contextlib.suppress(TopicError):
            accepted.append(topics.parse(topic))
    assert accepted == []


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "safecity",
        "safecity/v1",
        "safecity/v2/c/d/k/dev/telemetry",
        "other/v1/c/d/k/dev/telemetry",
        "safecity/v1/c/d/k/dev/readings",
        "safecity/v1/c/d/k/dev/telemetry/extra",
        "safecity/v1/c/d/k/telemetry",
        "safecity/v1/c/_alerts/high/extra",
        "safecity/v1/c/_alerts",
        "safecity/v1/c/_other/x",
        "/safecity/v1/c/d/k/dev/telemetry",
        "safecity/v1/c/d/k/dev/telemetry/",
        "safecity/v1/+/d/k/dev/telemetry",
        "safecity/v1/#",
    ],
)
def test_parse_refuses_malformed_topics(topic: str) -> None:
    with pytest.raises(TopicError):
        topics.parse(topic)


def test_bad_channel_refused() -> None:
    with pytest.raises(TopicError):
        topics.device_topic("c", "d", "k", "dev", "readings")


def test_parse_device_topic_refuses_platform_topics() -> None:
    with pytest.raises(TopicError):
        topics.parse_device_topic("safecity/v1/tashkent/_alerts/high")


def test_topic_error_is_a_safecity_error() -> None:
    assert issubclass(TopicError, SafecityError)


def test_filters_are_the_exact_strings_of_the_design() -> None:
    assert topics.device_filter(Channel.TELEMETRY) == "safecity/v1/+/+/+/+/telemetry"
    assert topics.device_filter("event") == "safecity/v1/+/+/+/+/event"
    assert topics.device_filter(Channel.STATUS, "tashkent") == ("safecity/v1/tashkent/+/+/+/status")
    assert topics.deadletter_filter() == "safecity/v1/+/_deadletter/+"
    assert topics.deadletter_filter("almaty") == "safecity/v1/almaty/_deadletter/+"
    assert topics.alert_filter() == "safecity/v1/+/_alerts/+"
    assert topics.alert_filter("bishkek") == "safecity/v1/bishkek/_alerts/+"
    assert topics.shared("ingest", topics.device_filter(Channel.TELEMETRY)) == (
        "$share/ingest/safecity/v1/+/+/+/+/telemetry"
    )
    assert topics.shared("ingest", "safecity/v1/#") == "$share/ingest/safecity/v1/#"


@given(identifiers, identifiers, identifiers, identifiers, channels)
def test_device_filter_matches_built_topics(
    city: str, district: str, kind: str, device_id: str, channel: Channel
) -> None:
    topic = topics.device_topic(city, district, kind, device_id, channel)
    for flt in (topics.device_filter(channel), topics.device_filter(channel, city)):
        f_parts, t_parts = flt.split("/"), topic.split("/")
        assert len(f_parts) == len(t_parts)
        assert all(f in ("+", t) for f, t in zip(f_parts, t_parts, strict=True))
