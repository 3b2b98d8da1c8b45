"""Dependencies: typed access to what the lifespan put on `app.state`.

Use the `Annotated` aliases in route signatures, e.g. `influx: InfluxDep`. The city of
a request is the path's `city_id`, else the `city` query parameter, else the city of
the path's `device_id`, else the first city the key sees; a city the key may not see
is a 404 with the body of a city that does not exist. `InfluxDep` and `DirectoryDep`
are that city's: its own database and devices.

Every dependency is `async def`, though none awaits: FastAPI runs a plain `def`
dependency in its thread pool, a hand-over to a worker thread and back for each one on
every request (about a tenth of the CPU of a cached 720-point series).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request

from api import audit
from api.apikeys import ApiKey
from api.directory import Directory
from api.settings import ApiSettings
from api.tenancy import CityRuntime, Tenancy
from safecity.influx import InfluxClient
from safecity.registry import City
from safecity.topics import IDENTIFIER


async def get_settings(request: Request) -> ApiSettings:
    """The settings the app was created with."""
    settings: ApiSettings = request.app.state.settings
    return settings


def tenancy_of(request: Request) -> Tenancy:
    """The served cities and their runtimes."""
    tenancy: Tenancy = request.app.state.tenancy
    return tenancy


async def get_tenancy(request: Request) -> Tenancy:
    """The served cities and their runtimes (`tenancy_of`, as a dependency)."""
    return tenancy_of(request)


def key_of(request: Request) -> ApiKey:
    """The key `require(scope)` admitted for this request (it runs before any city lookup)."""
    key: ApiKey | None = getattr(request.state, "api_key", None)
    if key is None:
        raise RuntimeError(f"{request.url.path}: a city route without an API key check")
    return key


async def get_key(request: Request) -> ApiKey:
    """The key `require(scope)` admitted for this request (`key_of`, as a dependency)."""
    return key_of(request)


MAX_ID_LENGTH = 64


def _valid(city_id: str) -> bool:
    return IDENTIFIER.fullmatch(city_id) is not None


async def get_city(request: Request) -> City:
    """The city this request is about (see the module docstring); noted for the audit log."""
    tenancy = tenancy_of(request)
    key = key_of(request)
    in_path = request.path_params.get("city_id")
    in_query = request.query_params.get("city")
    device_id = request.path_params.get("device_id")
    city: City | None = None
    if isinstance(in_path, str):
        # A malformed path id falls back to the default city: the path parameter's own
        # check then answers 422 naming it, as it always did.
        if _valid(in_path):
            city = tenancy.city(key, in_path)
    elif in_query is not None:
        # Over the parameter's length bound: its own check answers 422, as it always did.
        if len(in_query) <= MAX_ID_LENGTH:
            city = tenancy.city(key, in_query)
    elif isinstance(device_id, str):
        city = tenancy.city_of_device(key, device_id)
    if city is None:
        city = tenancy.default(key)
    audit.note_city(request.scope, city.id)
    return city


def runtime_of(request: Request, city: City) -> CityRuntime:
    """The runtime (database client, directory, hub) of a served city."""
    return tenancy_of(request).runtimes[city.id]


def client_of(app: FastAPI, city_id: str) -> InfluxClient:
    """The InfluxDB client of a served city's own database.

    The home city's is `app.state.influx` (one deployment, one city: the client it
    always had); every other city's is its runtime's.
    """
    tenancy: Tenancy = app.state.tenancy
    if city_id == tenancy.home:
        home: InfluxClient = app.state.influx
        return home
    return tenancy.runtimes[city_id].influx


def influx_of(request: Request, city: City) -> InfluxClient:
    """The InfluxDB client of the request's city's own database."""
    return client_of(request.app, city.id)


async def get_directory(request: Request, city: Annotated[City, Depends(get_city)]) -> Directory:
    """The request's city's devices indexed for pagination."""
    return runtime_of(request, city).directory


async def get_influx(request: Request, city: Annotated[City, Depends(get_city)]) -> InfluxClient:
    """The InfluxDB client of the request's city's database."""
    return influx_of(request, city)


async def get_server_influx(request: Request) -> InfluxClient:
    """The home city's client: what a probe of the InfluxDB server (not of a city) uses."""
    home: InfluxClient = request.app.state.influx
    return home


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
TenancyDep = Annotated[Tenancy, Depends(get_tenancy)]
KeyDep = Annotated[ApiKey, Depends(get_key)]
CityDep = Annotated[City, Depends(get_city)]
DirectoryDep = Annotated[Directory, Depends(get_directory)]
InfluxDep = Annotated[InfluxClient, Depends(get_influx)]
ServerInfluxDep = Annotated[InfluxClient, Depends(get_server_influx)]
