"""Response models of the API (they also shape the published OpenAPI document)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from safecity.registry import Device

FieldValue = float | int | bool | str


class ErrorBody(BaseModel):
    """The one error shape: a human-readable reason."""

    detail: str


class Status(BaseModel):
    """Liveness / readiness answer."""

    status: str


class Location(BaseModel):
    """A WGS84 position."""

    model_config = ConfigDict(frozen=True)

    lon: float
    lat: float


class DeviceOut(BaseModel):
    """A registry device as the API shows it."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: str
    district: str
    city: str
    location: Location

    @classmethod
    def of(cls, city_id: str, device: Device) -> DeviceOut:
        """The API view of a registry device."""
        lon, lat = device.location
        return cls(
            id=device.id,
            kind=device.kind,
            district=device.district,
            city=city_id,
            location=Location(lon=lon, lat=lat),
        )


class DevicePage(BaseModel):
    """One page of devices; pass `next_cursor` back as `cursor` for the next page."""

    items: list[DeviceOut]
    next_cursor: str | None


class LatestReading(BaseModel):
    """The newest stored reading of a device."""

    device_id: str
    kind: str
    district: str
    ts: str
    seq: int
    values: dict[str, FieldValue]
