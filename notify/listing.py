"""Listing stage: the notifications in the outboxes, served over HTTP on the metrics port
(`GET /notifications?city=..&incident=..&channel=..&status=..&limit=..`) for an API that
cannot read this notifier's directory (Kubernetes); the shape is `safecity.notifications`'.
Read-only; the cities asked for must be this notifier's."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from safecity import notifications
from safecity.outbox import DeliveryStatus


class Listing:
    """The `/notifications` route of one notifier process (its cities, its directory)."""

    def __init__(self, directory: Path, cities: Sequence[str]) -> None:
        self.directory, self.cities = directory, list(cities)

    async def __call__(self, params: Mapping[str, list[str]]) -> tuple[int, bytes]:
        """(status, JSON body) for the query; 400 naming a bad parameter."""
        try:
            cities, filters = self._parse(params)
        except ValueError as exc:
            return 400, json.dumps({"detail": str(exc)}).encode()
        found = await asyncio.to_thread(notifications.read, self.directory, cities, **filters)
        return 200, json.dumps([n.model_dump(mode="json") for n in found]).encode()

    def _parse(self, params: Mapping[str, list[str]]) -> tuple[list[str], dict[str, Any]]:
        cities = params.get("city") or self.cities
        unknown = sorted(set(cities) - set(self.cities))
        if unknown:
            raise ValueError(f"city {unknown[0]!r} is not served here ({', '.join(self.cities)})")
        one = {name: values[-1] for name, values in params.items() if name != "city"}
        extra = sorted(set(one) - {"incident", "channel", "status", "limit"})
        if extra:
            raise ValueError(f"unknown parameter {extra[0]!r}")
        filters: dict[str, Any] = {k: one[k] for k in ("incident", "channel") if k in one}
        if "status" in one:
            try:
                filters["status"] = DeliveryStatus(one["status"])
            except ValueError:
                known = ", ".join(s.value for s in DeliveryStatus)
                raise ValueError(f"status {one['status']!r} is not one of {known}") from None
        if "limit" in one:
            if not one["limit"].isdigit() or not 1 <= int(one["limit"]) <= 1000:
                raise ValueError(f"limit {one['limit']!r} is not 1..1000")
            filters["limit"] = int(one["limit"])
        return cities, filters
