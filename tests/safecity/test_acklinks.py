"""Acknowledgement links: a valid one verifies once; forged, malformed, expired, reused refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safecity.acklinks import Spent, ensure_key, new_claim, read_key, sign, verify
from safecity.errors import AckLinkError, ConfigError

KEY = b"k" * 32


def test_a_signed_link_verifies_and_is_spent_once(tmp_path: Path) -> None:
    claim = new_claim("inc-1", "tashkent", "ann", "telegram", expires_at=2_000.0)
    token = sign(KEY, claim)
    assert verify(KEY, token, now=1_000.0) == claim
    spent = Spent(tmp_path / "spent.db")
    spent.spend(claim, 1_000.0)
    with pytest.raises(AckLinkError) as exc:
        spent.spend(claim, 1_001.0)
    assert exc.value.reason == "reused"


def test_forged_and_expired_links_are_refused() -> None:
    claim = new_claim("inc-1", "tashkent", "ann", "telegram", expires_at=2_000.0)
    token = sign(KEY, claim)
    with pytest.raises(AckLinkError) as forged:
        verify(b"x" * 32, token, now=1_000.0)
    assert forged.value.reason == "forged"
    other = sign(KEY, new_claim("inc-2", "tashkent", "bob", "sms", 2_000.0))
    with pytest.raises(AckLinkError) as spliced:
        verify(KEY, token.split(".")[0] + "." + other.split(".")[1], now=1_000.0)
    assert spliced.value.reason == "forged"
    with pytest.raises(AckLinkError) as expired:
        verify(KEY, token, now=2_000.0)
    assert expired.value.reason == "expired"


@given(st.text(max_size=200))
def test_any_text_is_refused_without_a_crash(text: str) -> None:
    with pytest.raises(AckLinkError) as exc:
        verify(KEY, text, now=0.0)
    assert exc.value.reason in ("forged", "malformed")


def test_the_key_is_created_once_private_and_an_unusable_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "identity" / "ack.key"
    key = ensure_key(path)
    assert ensure_key(path) == key and len(key) == 32
    assert os.stat(path).st_mode & 0o777 == 0o600
    path.write_text("not hex\n")
    with pytest.raises(ConfigError, match=str(path)):
        read_key(path)
