"""Response models of the API (they also shape the published OpenAPI document)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from safecity.registry import Device

FieldValue = float | int | bool | str


class ErrorBody(BaseModel):
    """The one error shape: a human-readable reason."""

    detail: str


class Status(BaseModel):
    """Liveness / readiness answer: `ok`, `ready` or `not ready` (with the reason)."""

    status: str = Field(examples=["ready"])
    detail: str | None = Field(default=None, description="why not ready")


class Location(BaseModel):
    """A WGS84 position."""

    model_config = ConfigDict(frozen=True)

    lon: float
    lat: float


class DeviceOut(BaseModel):
    """A registry device as the API shows it (`status` only when the list was filtered by it)."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(examples=["noise-chilanzar-001"])
    kind: str = Field(examples=["noise"])
    district: str = Field(examples=["chilanzar"])
    city: str = Field(examples=["tashkent"])
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


class DeviceStatusOut(DeviceOut):
    """A device with its status now (online, stale, offline) and its newest reading time."""

    status: str = Field(examples=["online"])
    last_seen: str | None = Field(examples=["2026-01-15T06:14:00.000Z"])


class DevicePage(BaseModel):
    """One page of devices; pass `next_cursor` back as `cursor` for the next page.

    Items carry `status` and `last_seen` when the list was filtered by status.
    """

    items: list[DeviceStatusOut | DeviceOut]
    next_cursor: str | None


class LatestReading(BaseModel):
    """The newest stored reading of a device."""

    device_id: str
    kind: str
    district: str
    ts: str
    seq: int
    values: dict[str, FieldValue]


# --- city metrics -------------------------------------------------------------------


class Window(BaseModel):
    """The time window a figure covers: [from, to) in RFC 3339 UTC."""

    from_: str = Field(alias="from", examples=["2026-01-15T06:00:00.000Z"])
    to: str = Field(examples=["2026-01-15T06:15:00.000Z"])
    seconds: float = Field(examples=[900.0])

    model_config = ConfigDict(populate_by_name=True)


class Figure(BaseModel):
    """A number with its basis: how many devices it rests on (of how many) and how fresh it is."""

    value: float | None = Field(description="null when no device reported in the window")
    unit: str = Field(examples=["km/h"])
    devices: int = Field(description="devices whose readings the value rests on", examples=[11])
    expected: int = Field(description="devices of this kind in the scope", examples=[12])
    newest: str | None = Field(description="newest reading behind the value (RFC 3339)")
    age_s: float | None = Field(description="seconds from `newest` to the window's end")


class Exceedance(BaseModel):
    """Devices whose window mean exceeds a WHO 2021 guideline value."""

    guideline: float = Field(examples=[15.0])
    unit: str = Field(examples=["ug/m3"])
    averaging: str = Field(description="the guideline's averaging period", examples=["24h"])
    devices_above: int
    devices: int


class AirQuality(BaseModel):
    """US EPA AQI from the window means of PM2.5, PM10, NO2 and O3, and WHO exceedances."""

    aqi: Figure
    category: str | None = Field(examples=["Unhealthy for Sensitive Groups"])
    driving_pollutant: str | None = Field(examples=["pm25"])
    worst_device_aqi: int | None
    sub_indices: dict[str, int]
    pollutants: dict[str, Figure]
    who_exceedances: dict[str, Exceedance]


class Traffic(BaseModel):
    """Speed, congestion index (1 - speed / free-flow speed) and volume."""

    avg_speed: Figure
    congestion_index: Figure
    free_flow_kmh: float
    free_flow_basis: str
    volume: Figure
    occupancy: Figure


class Noise(BaseModel):
    """LAeq (energy mean over sensors) and the share of sensors above the WHO guideline."""

    laeq: Figure
    share_above_who: Figure
    who_guideline_db: float
    who_period: str = Field(examples=["day (Lden 53 dB)"])


class Parking(BaseModel):
    """Mean occupancy of parking zones."""

    occupancy: Figure


class Streetlights(BaseModel):
    """Lights on (or dimmed) and lights failed, from each light's latest state."""

    on: Figure
    failed: Figure


class Crowd(BaseModel):
    """People counted (sum of zone means) and mean zone occupancy."""

    people: Figure
    occupancy: Figure


class DeviceCounts(BaseModel):
    """Devices online / stale / offline (status messages + last reading vs the stale limit)."""

    total: int
    online: int
    stale: int
    offline: int
    rule: str


class Incidents(BaseModel):
    """Open incidents by severity, from the incident store (see `source`)."""

    total: int = Field(description="incidents open at the window's end")
    by_severity: dict[str, int]
    devices: int = Field(description="distinct devices behind the open incidents")
    source: str


class Served(BaseModel):
    """A part [from, to) of a series and what served it: `raw`, a rollup tier (`1h`) or
    the `board` (the raw points of the last minutes, which the API holds in memory)."""

    tier: str = Field(examples=["1d"])
    from_: str = Field(alias="from", examples=["2026-01-01T00:00:00.000Z"])
    to: str = Field(examples=["2026-12-01T00:00:00.000Z"])

    model_config = ConfigDict(populate_by_name=True)


class Overview(BaseModel):
    """City or district metrics for a window."""

    city: str
    district: str | None
    window: Window
    generated_at: str
    air_quality: AirQuality
    traffic: Traffic
    noise: Noise
    parking: Parking
    streetlights: Streetlights
    crowd: Crowd
    devices: DeviceCounts
    incidents: Incidents
    served_by: dict[str, list[Served]] = Field(
        default_factory=dict,
        description="Per kind, the parts of the window and the tier (or raw) that served its means",
    )


class CityOut(BaseModel):
    """A city served by this API."""

    id: str = Field(examples=["tashkent"])
    name: str = Field(examples=["Tashkent"])
    country: str
    timezone: str
    centroid: Location
    districts: int
    devices: int


class CityList(BaseModel):
    """The cities served by this API."""

    items: list[CityOut]


class SeriesPoint(BaseModel):
    """One bucket: its start and the aggregate (null-free: empty buckets are left out)."""

    ts: str = Field(examples=["2026-01-15T06:00:00.000Z"])
    value: float


class Series(BaseModel):
    """A time series of one field, aggregated per bucket."""

    city: str
    district: str | None
    device_id: str | None
    kind: str
    field: str
    unit: str
    agg: str
    every_s: int
    window: Window
    served_by: list[Served] = Field(
        default_factory=list,
        description="The parts of the window and the tier (or raw) that served each",
    )
    points: list[SeriesPoint]


class EventOut(BaseModel):
    """A stored safe-city event."""

    ts: str
    device_id: str
    district: str
    kind: str
    type: str
    severity: str
    seq: int
    details: dict[str, FieldValue]


class EventPage(BaseModel):
    """A page of events, newest first; pass `next_cursor` back as `cursor` for the next.

    `truncated` is true exactly when `next_cursor` is set (more events follow).
    """

    items: list[EventOut]
    truncated: bool
    next_cursor: str | None = Field(description="null on the last page")
    window: Window


class DeviceDelivery(BaseModel):
    """Delivery accounting of one device over a window: sent, stored, rejected, last seen."""

    device_id: str
    window: Window
    sent: dict[str, int] | None = Field(
        description="messages the ledger says were sent and acknowledged, by channel; "
        "null when no ledger is configured"
    )
    stored: dict[str, int] = Field(description="points in InfluxDB, by channel")
    rejected: dict[str, int] = Field(description="dead letters by reason")
    last_seen: str | None
