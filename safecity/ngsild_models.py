"""Our fields as FIWARE Smart Data Model attributes: names, NGSI-LD types and UN/CEFACT units.

One `EntityModel` per sensor kind that has an observation model, plus the `Device`
and `Alert` entities every device and incident becomes. Fields with no counterpart in
the Smart Data Model are listed with the reason. The docs' table and the served
JSON-LD `@context` are generated from here (tests keep them equal).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

from safecity import catalogue

SDM = "https://smartdatamodels.org"
NGSI_LD = "https://uri.etsi.org/ngsi-ld"
CONTEXT_FILE = "ngsi-ld-context.json"
NgsiType = Literal["Property", "Relationship", "GeoProperty"]
ValueType = Literal["number", "boolean", "string", "object", "array"]


@dataclass(frozen=True, slots=True)
class Attribute:
    """One Smart Data Model attribute and the field of ours (if any) it carries.

    `scale` converts our unit to the model's (value * scale); `values` renames enum
    values to the model's spelling; `common` marks the SDM's shared (subject-less) terms.
    """

    name: str
    field: str | None
    value_type: ValueType
    unit_code: str | None = None
    ngsi_type: NgsiType = "Property"
    scale: float = 1.0
    values: tuple[tuple[str, str], ...] = ()
    common: bool = False
    iri: str | None = None

    def convert(self, value: Any) -> Any:
        """Our stored value as the model's value (unit scale, enum spelling)."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return dict(self.values).get(str(value), value) if self.values else value
        return round(value * self.scale, 6) if self.scale != 1.0 else value


@dataclass(frozen=True, slots=True)
class EntityModel:
    """A Smart Data Model: its name, subject repository and the attributes we fill."""

    name: str
    subject: str
    attributes: tuple[Attribute, ...]
    unmapped: tuple[tuple[str, str], ...] = ()
    kinds: tuple[str, ...] = field(default=())

    @property
    def type_iri(self) -> str:
        """The type's IRI in the Smart Data Models' vocabulary."""
        return f"{SDM}/{self.subject}/{self.name}"

    def attribute(self, name: str) -> Attribute | None:
        """The attribute of that name, or None."""
        return next((a for a in self.attributes if a.name == name), None)

    def iri(self, attribute: Attribute) -> str:
        """The attribute's IRI (as the Smart Data Models' own context defines it)."""
        if attribute.iri is not None:
            return attribute.iri
        if attribute.name == "location":
            return f"{NGSI_LD}/location"
        return (
            f"{SDM}/{attribute.name}"
            if attribute.common
            else f"{SDM}/{self.subject}/{attribute.name}"
        )


def _q(name: str, our: str, unit: str | None = None, **kw: Any) -> Attribute:
    """A measured number."""
    return Attribute(name, our, "number", unit, **kw)


# The attributes an observation's time may have, by model (the models differ).
TIME_ATTRIBUTES = ("dateObserved", "observationDateTime", "timeInstant")
DESCRIPTION_IRI = "http://purl.org/dc/terms/description"


def _observed(
    time: str = "dateObserved", device: bool = True, common_time: bool = True
) -> tuple[Attribute, ...]:
    """When, where, which district and (if the model has a single `refDevice`) which device.

    Streetlight's and WasteContainer's `refDevice` is an array, which an NGSI-LD 1.x
    normalized relationship cannot hold: there the entity id names the device.
    """
    out = [
        Attribute(time, None, "string", common=common_time),
        Attribute("location", None, "object", ngsi_type="GeoProperty"),
        Attribute("areaServed", None, "string", common=True),
    ]
    if device:
        out.append(Attribute("refDevice", None, "string", ngsi_type="Relationship"))
    return tuple(out)


OBSERVED = _observed()
HEALTH_ELSEWHERE = (
    ("battery", "on the Device entity (batteryLevel)"),
    ("rssi", "on the Device entity (rssi)"),
    ("uptime", "no counterpart in the Device model"),
)
ENV = "dataModel.Environment"
TRANSPORT = "dataModel.Transportation"

OBSERVATIONS: dict[str, EntityModel] = {
    m.kinds[0]: m
    for m in (
        EntityModel(
            "AirQualityObserved",
            ENV,
            (
                *OBSERVED,
                _q("pm25", "pm25", "GQ"),
                _q("pm10", "pm10", "GQ"),
                _q("no2", "no2", "GQ"),
                _q("o3", "o3", "GQ"),
                _q("so2", "so2", "GQ"),
                _q("co", "co", "GP"),
                _q("temperature", "temperature", "CEL"),
                _q("relativeHumidity", "humidity", "C62"),
            ),
            HEALTH_ELSEWHERE,
            ("air_quality",),
        ),
        EntityModel(
            "WeatherObserved",
            "dataModel.Weather",
            (
                *OBSERVED,
                _q("temperature", "temperature", "CEL"),
                _q("relativeHumidity", "humidity", "C62"),
                _q("atmosphericPressure", "pressure", "A97"),
                _q("windSpeed", "wind_speed", "MTS"),
                _q("windDirection", "wind_dir", "DD"),
                _q("precipitation", "precipitation", "H67"),
                _q("solarRadiation", "solar", "D54"),
            ),
            HEALTH_ELSEWHERE,
            ("weather",),
        ),
        EntityModel(
            "NoiseLevelObserved",
            ENV,
            (*OBSERVED, _q("LAeq", "laeq", "2N"), _q("LAmax", "lamax", "2N")),
            (("la90", "no counterpart (the model has no percentile levels)"), *HEALTH_ELSEWHERE),
            ("noise",),
        ),
        EntityModel(
            "TrafficFlowObserved",
            TRANSPORT,
            (
                *_observed(device=False),
                # Ours is a rate (vehicles per hour); UN/CEFACT has no code for it.
                _q("intensity", "intensity", None),
                _q("occupancy", "occupancy", "C62"),
                _q("averageVehicleSpeed", "avg_speed", "KMH"),
                Attribute("congested", "congested", "boolean"),
                _q("laneId", "lane", None),
            ),
            HEALTH_ELSEWHERE,
            ("traffic",),
        ),
        EntityModel(
            "OnStreetParking",
            "dataModel.Parking",
            (
                *_observed("observationDateTime", False, common_time=False),
                _q("occupiedSpotNumber", "occupied_spots", None),
                _q("totalSpotNumber", "total_spots", None),
            ),
            (
                ("occupancy", "no counterpart (occupiedSpotNumber / totalSpotNumber)"),
                *HEALTH_ELSEWHERE,
            ),
            ("parking",),
        ),
        EntityModel(
            "Streetlight",
            "dataModel.Streetlighting",
            (
                *_observed("observationDateTime", False, common_time=False),
                Attribute("powerState", "power_state", "string", values=(("dimmed", "low"),)),
                _q("powerConsumption", "power", "WTT"),
                # The commanded dimming level, 0-100 %, as the model's relative 0-1.
                _q("illuminanceLevel", "level", "C62", scale=0.01),
                Attribute(
                    "status",
                    "status",
                    "string",
                    iri=f"{NGSI_LD}/status",
                    values=(
                        ("defective_lamp", "defectiveLamp"),
                        ("column_issue", "columnIssue"),
                        ("broken_lantern", "brokenLantern"),
                    ),
                ),
            ),
            HEALTH_ELSEWHERE,
            ("streetlight",),
        ),
        EntityModel(
            "CrowdFlowObserved",
            TRANSPORT,
            (
                *_observed(device=False),
                _q("peopleCount", "people_count", None),
                _q("occupancy", "occupancy", "C62"),
                _q("averageCrowdSpeed", "avg_speed", "KMH", scale=3.6),
                Attribute("congested", "congested", "boolean"),
            ),
            HEALTH_ELSEWHERE,
            ("crowd",),
        ),
        EntityModel(
            "WasteContainer",
            "dataModel.WasteManagement",
            (
                *_observed("timeInstant", False),
                _q("fillingLevel", "filling_level", "C62"),
                _q("temperature", "temperature", "CEL"),
            ),
            HEALTH_ELSEWHERE,
            ("waste",),
        ),
    )
}

DEVICE = EntityModel(
    "Device",
    "dataModel.Device",
    (
        Attribute("name", None, "string", common=True),
        Attribute("description", None, "string", iri=DESCRIPTION_IRI),
        Attribute("location", None, "object", ngsi_type="GeoProperty"),
        Attribute("areaServed", None, "string", common=True),
        _q("batteryLevel", "battery", "C62"),
        _q("rssi", "rssi", "DBM"),
        Attribute("dateLastValueReported", None, "string"),
    ),
    (("uptime", "no counterpart in the Device model"),),
    tuple(catalogue.KINDS),
)

ALERT = EntityModel(
    "Alert",
    "dataModel.Alert",
    (
        Attribute("category", None, "string"),
        Attribute("subCategory", None, "string"),
        Attribute("severity", None, "string"),
        Attribute("description", None, "string", iri=DESCRIPTION_IRI),
        Attribute("dateIssued", None, "string"),
        Attribute("validFrom", None, "string", common=True),
        Attribute("location", None, "object", ngsi_type="GeoProperty"),
        Attribute("areaServed", None, "string", common=True),
        Attribute("alertSource", None, "string", ngsi_type="Relationship"),
        Attribute("data", None, "object", iri=f"{NGSI_LD}/data"),
    ),
    (
        ("transitions", "in `data.state` (the current state) only; the history stays on /v1"),
        ("devices", "the first is `alertSource`; all are in `data.devices`"),
    ),
)

MODELS: dict[str, EntityModel] = {
    **{m.name: m for m in OBSERVATIONS.values()},
    DEVICE.name: DEVICE,
    ALERT.name: ALERT,
}


def observation_model(kind: str) -> EntityModel | None:
    """The observation model a kind's readings map to (None: health-only kinds)."""
    return OBSERVATIONS.get(kind)


def context_document() -> dict[str, Any]:
    """The JSON-LD `@context` of our entities (the NGSI-LD core context is implied).

    Types are terms with type-scoped contexts: one term (`temperature`) may mean a
    different IRI in two subjects, as in the Smart Data Models' own contexts.
    """
    terms: dict[str, Any] = {}
    for model in MODELS.values():
        scoped = {a.name: model.iri(a) for a in model.attributes if a.name != "location"}
        terms[model.name] = {"@id": model.type_iri, "@context": scoped}
    return {"@context": terms}


def packaged_context() -> str:
    """The context file shipped in the package (what the API serves)."""
    return resources.files("safecity").joinpath("data", CONTEXT_FILE).read_text(encoding="utf-8")


def render_context() -> str:
    """The context file's text as generated from the mapping."""
    return json.dumps(context_document(), indent=2, sort_keys=True) + "\n"


def _cell(attribute: Attribute, model: EntityModel) -> str:
    unit = "" if attribute.field is None else catalogue_unit(model, attribute.field)
    ours = f"`{attribute.field}` ({unit})" if attribute.field else "(derived)"
    code = f"`{attribute.unit_code}`" if attribute.unit_code else "-"
    extra = []
    if attribute.scale != 1.0:
        extra.append(f"x {attribute.scale:g}")
    extra += [f"`{a}` -> `{b}`" for a, b in attribute.values]
    return (
        f"| {ours} | `{attribute.name}` | {attribute.ngsi_type} | {attribute.value_type} "
        f"| {code} | {'; '.join(extra)} |"
    )


def catalogue_unit(model: EntityModel, name: str) -> str:
    """Our unit of a field of the model's kinds (health fields included)."""
    for kind in model.kinds or tuple(catalogue.KINDS):
        for q in catalogue.telemetry_quantities(kind):
            if q.name == name:
                return q.unit or q.type
    return ""


def markdown_table() -> str:
    """The docs' mapping tables, one per entity type (a test keeps them equal)."""
    lines: list[str] = []
    for model in MODELS.values():
        kinds = ", ".join(f"`{k}`" for k in model.kinds) or "incidents"
        lines += [
            f"### {model.name} ({model.subject}; from {kinds})",
            "",
            "| Ours | Attribute | NGSI-LD | Type | UN/CEFACT | Conversion |",
            "|---|---|---|---|---|---|",
            *(_cell(a, model) for a in model.attributes),
            "",
        ]
        if model.unmapped:
            lines += ["No counterpart: " + "; ".join(f"`{f}`: {r}" for f, r in model.unmapped)]
            lines.append("")
    return "\n".join(lines)
