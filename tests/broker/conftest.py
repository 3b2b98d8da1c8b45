"""Fixtures: Mosquitto instances of the platform's secure config, each with its own identities."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# --import-mode=importlib puts no test directory on sys.path; the test kit lives here.
sys.path.insert(0, str(Path(__file__).parent))

from brokerkit import SecureBroker, start_secure_broker


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """A hardened broker: passwords + ACL on loopback, server-only TLS on a second port."""
    broker = start_secure_broker(tmp_path_factory.mktemp("secure"), mutual_tls=False)
    yield broker
    broker.mosquitto.stop()


@pytest.fixture(scope="module")
def mutual(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """A hardened broker whose TLS listener requires client certificates (CN = username)."""
    broker = start_secure_broker(tmp_path_factory.mktemp("mutual"), mutual_tls=True)
    yield broker
    broker.mosquitto.stop()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[SecureBroker]:
    """A hardened broker of its own that no test has reloaded yet."""
    broker = start_secure_broker(tmp_path, mutual_tls=False)
    yield broker
    broker.mosquitto.stop()
