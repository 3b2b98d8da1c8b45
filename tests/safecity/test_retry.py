"""`retry_storage` with `count_errors`: every failed attempt counted by its type, then the
result of the attempt that worked."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter

from safecity.errors import StorageAuthError, StorageUnavailableError
from safecity.retry import Backoff, count_errors, retry_storage


def test_each_failed_attempt_is_counted_by_its_type_until_one_works() -> None:
    registry = CollectorRegistry()
    errors = Counter("demo_storage_errors_total", "Failed calls", ["error"], registry=registry)
    failures: list[Exception] = [
        StorageUnavailableError("influxdb down"),
        StorageAuthError("401"),
        StorageUnavailableError("influxdb slow"),
    ]

    async def action() -> str:
        if failures:
            raise failures.pop(0)
        return "stored"

    async def no_wait(_: float) -> None:
        return None

    result = asyncio.run(
        retry_storage(
            action, "demo", backoff=Backoff(base=0.001), on_error=count_errors(errors),
            sleep=no_wait,
        )
    )  # fmt: skip
    assert result == "stored"
    value = registry.get_sample_value
    assert value("demo_storage_errors_total", {"error": "StorageUnavailableError"}) == 2
    assert value("demo_storage_errors_total", {"error": "StorageAuthError"}) == 1
