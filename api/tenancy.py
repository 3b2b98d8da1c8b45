"""The cities one API serves, each with its own database, and which of them a key may see.

Every city loaded at start-up gets its own InfluxDB client (on the database
`InfluxSettings.database_for` names), its own device directory and its own live-stream
hub; nothing a request for one city reads comes from another city's database. A key
sees the cities it was created for (`safecity apikey create --city ...`; none = every
city). A city the key may not see answers exactly as a city that does not exist, so a
key learns nothing about the cities outside its scope.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException

from api.apikeys import ApiKey
from api.directory import Directory
from api.live import Hub
from safecity.board import Board
from safecity.influx import InfluxClient
from safecity.registry import City


@dataclass(frozen=True)
class CityRuntime:
    """What the API holds for one city: its registry, database, client, directory, hub and
    board."""

    city: City
    database: str
    influx: InfluxClient
    directory: Directory
    hub: Hub
    board: Board | None = None
    """The overview's moving window in memory (`safecity.board`), None when it is off."""


class Tenancy:
    """The served cities in load order (the first is the home city) and their runtimes."""

    def __init__(self, runtimes: Mapping[str, CityRuntime]) -> None:
        if not runtimes:
            raise ValueError("an API serves at least one city")
        self.runtimes = dict(runtimes)
        self.home = next(iter(self.runtimes))

    @property
    def cities(self) -> list[City]:
        """Every served city, in load order."""
        return [r.city for r in self.runtimes.values()]

    def visible(self, key: ApiKey) -> list[City]:
        """The served cities the key may see, in load order."""
        return [r.city for r in self.runtimes.values() if key.sees(r.city.id)]

    def unknown_city(self, key: ApiKey, city_id: str) -> HTTPException:
        """The 404 of a city that is not served or not the key's: the same body for both."""
        served = ", ".join(c.id for c in self.visible(key)) or "none of this key's cities"
        return HTTPException(
            status_code=404, detail=f"unknown city {city_id} (this API serves {served})"
        )

    def city(self, key: ApiKey, city_id: str) -> City:
        """The city `city_id` if it is served and the key sees it, else the unknown-city 404."""
        runtime = self.runtimes.get(city_id)
        if runtime is None or not key.sees(city_id):
            raise self.unknown_city(key, city_id)
        return runtime.city

    def default(self, key: ApiKey) -> City:
        """The city a request naming none means: the first one the key sees."""
        visible = self.visible(key)
        if not visible:
            raise self.unknown_city(key, key.cities[0] if key.cities else self.home)
        return visible[0]

    def city_of_device(self, key: ApiKey, device_id: str) -> City | None:
        """The visible city that has the device (device ids are unique across cities)."""
        for city in self.visible(key):
            if city.device(device_id) is not None:
                return city
        return None


def describe(tenancy: Tenancy) -> dict[str, Any]:
    """The served cities and their databases, for the start-up log line."""
    return {cid: r.database for cid, r in tenancy.runtimes.items()}
