"""Dependencies: typed access to what the lifespan put on `app.state`.

Use the `Annotated` aliases in route signatures, e.g. `influx: InfluxDep`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.directory import Directory
from api.settings import ApiSettings
from safecity.influx import InfluxClient
from safecity.registry import City


def get_settings(request: Request) -> ApiSettings:
    """The settings the app was created with."""
    settings: ApiSettings = request.app.state.settings
    return settings


def get_city(request: Request) -> City:
    """The city registry loaded at start-up."""
    city: City = request.app.state.city
    return city


def get_directory(request: Request) -> Directory:
    """The city's devices indexed for pagination."""
    directory: Directory = request.app.state.directory
    return directory


def get_influx(request: Request) -> InfluxClient:
    """The InfluxDB client owned by the lifespan."""
    influx: InfluxClient = request.app.state.influx
    return influx


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
CityDep = Annotated[City, Depends(get_city)]
DirectoryDep = Annotated[Directory, Depends(get_directory)]
InfluxDep = Annotated[InfluxClient, Depends(get_influx)]
