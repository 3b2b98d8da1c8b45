"""The sensor catalogue: every sensor kind and event type, its quantities, units and hard limits.

Hard limits are the validator's: a little wider than the realistic ranges of Central
Asian cities (the simulator's calibration table in simulators/README.md), much narrower
than "any float".
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

ValueType = Literal["float", "int", "bool", "enum"]


@dataclass(frozen=True, slots=True)
class Quantity:
    """One measured quantity of a kind: name, unit, type and hard validation limits."""

    name: str
    unit: str
    type: ValueType = "float"
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    required: bool = True
    description: str = ""


@dataclass(frozen=True, slots=True)
class SensorKind:
    """A kind of device: its telemetry quantities, cadence and FIWARE data model."""

    name: str
    quantities: tuple[Quantity, ...]
    cadence_s: float
    data_model: str
    emits_events: tuple[str, ...] = ()
    description: str = ""

    def quantity(self, name: str) -> Quantity:
        """Return the named quantity or raise KeyError."""
        for q in self.quantities:
            if q.name == name:
                return q
        raise KeyError(name)


class Severity(StrEnum):
    """Event and alert severity, lowest first."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True)
class EventType:
    """A discrete safe-city event type and its typed details."""

    name: str
    details: tuple[Quantity, ...]
    default_severity: Severity
    description: str = ""


def _f(name: str, unit: str, low: float, high: float, *, required: bool = True) -> Quantity:
    return Quantity(name, unit, "float", low, high, required=required)


def _i(name: str, unit: str, low: int, high: int, *, required: bool = True) -> Quantity:
    return Quantity(name, unit, "int", low, high, required=required)


def _b(name: str, *, required: bool = True) -> Quantity:
    return Quantity(name, "", "bool", required=required)


def _e(name: str, *choices: str, required: bool = True) -> Quantity:
    return Quantity(name, "", "enum", choices=choices, required=required)


def _s(name: str, *, required: bool = True) -> Quantity:
    """A short free-text detail (identifier-like), e.g. a zone or list name."""
    return Quantity(name, "", "enum", choices=(), required=required)


# Every device may piggy-back its health on its telemetry; device_health devices
# (gateways, network nodes) report nothing else.
HEALTH: tuple[Quantity, ...] = (
    _f("battery", "1", 0.0, 1.0, required=False),
    _f("rssi", "dBm", -150.0, 0.0, required=False),
    _i("uptime", "s", 0, 20 * 365 * 86_400, required=False),
)

CONFIDENCE = _f("confidence", "1", 0.0, 1.0)

KINDS: dict[str, SensorKind] = {
    k.name: k
    for k in (
        SensorKind(
            "air_quality",
            (
                _f("pm25", "ug/m3", 0, 1500),
                _f("pm10", "ug/m3", 0, 3000),
                _f("no2", "ug/m3", 0, 1000),
                _f("o3", "ug/m3", 0, 800),
                _f("so2", "ug/m3", 0, 1000),
                _f("co", "mg/m3", 0, 100),
                _f("temperature", "degC", -45, 60, required=False),
                _f("humidity", "1", 0, 1, required=False),
            ),
            cadence_s=60,
            # CATALOGUE.md: an air-pollution episode's source is the AQ network.
            emits_events=("pollution_episode",),
            data_model="AirQualityObserved",
        ),
        SensorKind(
            "weather",
            (
                _f("temperature", "degC", -45, 60),
                _f("humidity", "1", 0, 1),
                _f("pressure", "hPa", 800, 1100),
                _f("wind_speed", "m/s", 0, 75),
                _f("wind_dir", "deg", 0, 360),
                _f("precipitation", "mm/h", 0, 300),
                _f("solar", "W/m2", 0, 1500),
            ),
            cadence_s=60,
            data_model="WeatherObserved",
        ),
        SensorKind(
            "noise",
            (
                _f("laeq", "dB(A)", 20, 140),
                _f("lamax", "dB(A)", 20, 150),
                _f("la90", "dB(A)", 20, 140),
            ),
            cadence_s=60,
            data_model="NoiseLevelObserved",
        ),
        SensorKind(
            "traffic",
            (
                _f("intensity", "veh/h", 0, 3000),
                _f("occupancy", "1", 0, 1),
                _f("avg_speed", "km/h", 0, 200),
                _b("congested"),
                _i("lane", "1", 1, 12, required=False),
            ),
            cadence_s=60,
            data_model="TrafficFlowObserved",
            emits_events=("congestion", "road_closed", "stopped_vehicle", "road_accident"),
        ),
        SensorKind(
            "parking",
            (
                _f("occupancy", "1", 0, 1),
                _i("occupied_spots", "1", 0, 5000, required=False),
                _i("total_spots", "1", 1, 5000, required=False),
            ),
            cadence_s=300,
            data_model="OnStreetParking",
        ),
        SensorKind(
            "streetlight",
            (
                _e("power_state", "on", "off", "dimmed"),
                _f("power", "W", 0, 500),
                _e("status", "ok", "defective_lamp", "column_issue", "broken_lantern"),
                # The commanded dimming level; reported once an operator set one.
                _i("level", "%", 0, 100, required=False),
            ),
            cadence_s=900,
            data_model="StreetLight",
        ),
        SensorKind(
            "crowd",
            (
                _i("people_count", "1", 0, 20_000),
                _f("occupancy", "1", 0, 1),
                _f("avg_speed", "m/s", 0, 10),
                _b("congested"),
            ),
            cadence_s=60,
            data_model="CrowdFlowObserved",
            emits_events=("crowd_threshold",),
        ),
        SensorKind(
            "waste",
            (
                _f("filling_level", "1", 0, 1),
                _f("temperature", "degC", -45, 90),
            ),
            cadence_s=3600,
            data_model="WasteContainer",
            emits_events=("fire",),
        ),
        SensorKind(
            "device_health",
            tuple(Quantity(q.name, q.unit, q.type, q.low, q.high, q.choices) for q in HEALTH),
            cadence_s=600,
            data_model="DeviceMeasurement",
        ),
        SensorKind(
            "cctv",
            (),
            cadence_s=300,
            data_model="Device",
            emits_events=(
                "intrusion",
                "line_crossing",
                "wrong_way",
                "loitering",
                "abandoned_object",
                "crowd_threshold",
                "camera_tamper",
                "camera_offline",
            ),
            description="CCTV analytics camera (ONVIF); telemetry is health only",
        ),
        SensorKind(
            "panic_button",
            (),
            cadence_s=900,
            data_model="Device",
            emits_events=("panic",),
            description="SOS button at stops, kiosks, schools; telemetry is health only",
        ),
        SensorKind(
            "gunshot",
            (),
            cadence_s=300,
            data_model="Device",
            emits_events=("gunshot",),
            description="acoustic array node; telemetry is health only",
        ),
        SensorKind(
            "anpr",
            (),
            cadence_s=300,
            data_model="Device",
            emits_events=("anpr_hit", "red_light_violation", "speeding_violation"),
            description="plate-reading camera; plates leave it only as salted hashes",
        ),
    )
}


@dataclass(frozen=True, slots=True)
class Guideline:
    """A WHO guideline value: the limit, its unit and the time it is averaged over."""

    value: float
    unit: str
    period: str


WHO_AIR: dict[str, Guideline] = {
    "pm25": Guideline(15, "ug/m3", "24h"),
    "pm10": Guideline(45, "ug/m3", "24h"),
    "no2": Guideline(25, "ug/m3", "24h"),
    "o3": Guideline(100, "ug/m3", "8h"),
    "so2": Guideline(40, "ug/m3", "24h"),
    "co": Guideline(4, "mg/m3", "24h"),
}
"""WHO 2021 global air-quality guidelines (CATALOGUE.md), the one table every part uses."""
WHO_NOISE_DAY_DB = 53.0
"""WHO Environmental Noise Guidelines, road traffic: Lden 53 dB(A)."""
WHO_NOISE_NIGHT_DB = 45.0
"""WHO Environmental Noise Guidelines, road traffic: Lnight 45 dB(A)."""


OBJECT_CLASSES = ("person", "car", "truck", "bus", "motorcycle", "bicycle", "animal", "unknown")
PLATE_HASH = Quantity("plate_hash", "", "enum", choices=(), description="hex sha256 of salt+plate")

EVENT_TYPES: dict[str, EventType] = {
    e.name: e
    for e in (
        EventType(
            "intrusion",
            (_s("zone"), _e("object_class", *OBJECT_CLASSES), CONFIDENCE),
            Severity.HIGH,
        ),
        EventType(
            "line_crossing",
            (_s("line"), _e("direction", "in", "out"), _e("object_class", *OBJECT_CLASSES)),
            Severity.LOW,
        ),
        EventType(
            "wrong_way",
            (_s("line"), _e("object_class", *OBJECT_CLASSES), CONFIDENCE),
            Severity.HIGH,
        ),
        EventType("loitering", (_s("zone"), _f("dwell_s", "s", 0, 86_400)), Severity.MEDIUM),
        EventType("abandoned_object", (_s("zone"), _f("dwell_s", "s", 0, 86_400)), Severity.MEDIUM),
        EventType(
            "crowd_threshold",
            (_s("zone"), _i("count", "1", 0, 100_000), _i("threshold", "1", 0, 100_000)),
            Severity.MEDIUM,
        ),
        EventType(
            "camera_tamper", (_e("cause", "covered", "moved", "defocused"),), Severity.MEDIUM
        ),
        EventType("camera_offline", (_f("silent_s", "s", 0, 30 * 86_400),), Severity.MEDIUM),
        EventType("anpr_hit", (PLATE_HASH, _s("list"), CONFIDENCE), Severity.HIGH),
        EventType("panic", (_s("button"), _s("location_name", required=False)), Severity.CRITICAL),
        EventType(
            "gunshot",
            (
                _i("rounds", "1", 1, 200),
                _f("lat", "deg", -90, 90),
                _f("lon", "deg", -180, 180),
                _f("accuracy_m", "m", 0, 1000),
                _i("sensors", "1", 1, 100),
                CONFIDENCE,
            ),
            Severity.CRITICAL,
        ),
        EventType(
            "road_accident",
            (
                _i("vehicles", "1", 1, 100),
                _i("casualties", "1", 0, 1000),
                _i("lanes_blocked", "1", 0, 12),
            ),
            Severity.HIGH,
        ),
        EventType(
            "congestion",
            (_s("segment"), _f("speed", "km/h", 0, 200), _f("queue_m", "m", 0, 50_000)),
            Severity.LOW,
        ),
        EventType("road_closed", (_s("segment"),), Severity.MEDIUM),
        EventType(
            "stopped_vehicle", (_s("segment"), _f("duration_s", "s", 0, 86_400)), Severity.MEDIUM
        ),
        EventType("red_light_violation", (PLATE_HASH,), Severity.LOW),
        EventType(
            "speeding_violation",
            (PLATE_HASH, _f("speed", "km/h", 0, 400), _f("limit", "km/h", 5, 200)),
            Severity.LOW,
        ),
        EventType(
            "pollution_episode",
            (
                _e("pollutant", "pm25", "pm10", "no2", "o3", "so2", "co"),
                _f("value", "ug/m3", 0, 3000),
                _f("duration_s", "s", 0, 30 * 86_400),
            ),
            Severity.MEDIUM,
        ),
        EventType(
            "fire", (_e("level", "smoke", "fire"), _f("extent_m2", "m2", 0, 1e6)), Severity.CRITICAL
        ),
        EventType(
            "flood", (_f("level_m", "m", -10, 30), _f("extent_m2", "m2", 0, 1e9)), Severity.CRITICAL
        ),
        EventType(
            "earthquake", (_f("magnitude", "1", 0, 10), _f("pga_g", "g", 0, 5)), Severity.CRITICAL
        ),
    )
}

# Free-text details (zone, list, segment, ...) are identifier-like: short, allow-listed
# characters, so they can never smuggle line-protocol or HTML syntax.
DETAIL_TEXT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\- ]{0,63}$"
PLATE_HASH_PATTERN = r"^[0-9a-f]{64}$"


def kind(name: str) -> SensorKind:
    """Return the sensor kind named, or raise KeyError."""
    return KINDS[name]


def telemetry_quantities(kind_name: str) -> tuple[Quantity, ...]:
    """All quantities a kind may report: its own plus the optional health ones."""
    own = KINDS[kind_name].quantities
    names = {q.name for q in own}
    return own + tuple(q for q in HEALTH if q.name not in names)


# --- commands: what an operator may ask a device of each kind to do ---------------------


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A command devices of a kind execute: its name, typed and bounded parameters, effect."""

    name: str
    params: tuple[Quantity, ...]
    description: str


MAX_SOUND_S = 120
"""The longest a siren or public-address message may sound for one command (seconds)."""

COMMON_COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec("reboot", (), "restart: offline for a moment, then back with a birth message"),
    CommandSpec(
        "set_interval",
        (_i("interval_s", "s", 10, 86_400),),
        "report telemetry every `interval_s` seconds from now on",
    ),
)
KIND_COMMANDS: dict[str, tuple[CommandSpec, ...]] = {
    "streetlight": (
        CommandSpec(
            "set_level", (_i("level", "%", 0, 100),), "light at `level` % (0 off, 100 full)"
        ),
    ),
    "cctv": (
        CommandSpec(
            "goto_preset", (_i("preset", "1", 1, 255),), "turn the PTZ camera to a stored preset"
        ),
    ),
    # The kiosks' SOS buttons carry the siren and public-address speaker.
    "panic_button": (
        CommandSpec(
            "sound",
            (
                _e("signal", "siren", "chime", "announcement"),
                _i("duration_s", "s", 1, MAX_SOUND_S),
            ),
            f"sound the siren or PA for `duration_s` seconds (at most {MAX_SOUND_S})",
        ),
    ),
}


def commands_of(kind_name: str) -> dict[str, CommandSpec]:
    """Every command devices of a kind execute, by name (KeyError for an unknown kind)."""
    KINDS[kind_name]
    own = KIND_COMMANDS.get(kind_name, ())
    return {c.name: c for c in (*own, *COMMON_COMMANDS)}
