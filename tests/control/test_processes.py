"""free_port: a port handed out once is not handed out again by the same process."""

from __future__ import annotations

import random
import socket

import pytest

from control import processes
from control.processes import LOOPBACK, free_port


def test_a_port_not_yet_bound_is_never_handed_out_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    # A stack picks all its ports before it binds any: when the random pick repeats
    # (the same number twice in a row here), the second caller still gets another port.
    low = max(processes._ephemeral_low() - 12_000, 10_000)
    chosen = next(
        p
        for p in random.sample(range(low, low + 12_000), 200)
        if p not in processes._HANDED_OUT and _bindable(p)
    )
    monkeypatch.setattr(random, "randrange", lambda *_: chosen)
    first, second = free_port(), free_port()
    assert first == chosen
    assert second != first
    assert _bindable(second)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True
