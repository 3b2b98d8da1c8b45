"""NGSI-LD entities (normalized form) of our devices, readings and incidents, and their
simplified forms (keyValues, temporalValues); the mapping is `safecity.ngsild_models`."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from safecity import catalogue
from safecity.incidents import Incident
from safecity.ngsild_models import (
    ALERT,
    DEVICE,
    MODELS,
    TIME_ATTRIBUTES,
    Attribute,
    EntityModel,
    observation_model,
)
from safecity.readings import format_ts
from safecity.registry import Device, Point

URN = re.compile(
    r"^urn:ngsi-ld:(?P<type>[A-Za-z][A-Za-z0-9]{0,63}):(?P<ref>[A-Za-z0-9._:-]{1,128})$"
)
# Incidents' alert categories by their event (the Alert model's enumeration).
EVENT_CATEGORY = {
    "pollution_episode": "environment",
    "congestion": "traffic",
    "road_closed": "traffic",
    "stopped_vehicle": "traffic",
    "road_accident": "traffic",
    "red_light_violation": "traffic",
    "speeding_violation": "traffic",
    "fire": "security",
}
Entity = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Sample:
    """One stored reading: its RFC 3339 time and values (our field names)."""

    ts: str
    values: Mapping[str, Any]


def urn(entity_type: str, ref: str) -> str:
    """The entity id of a device, observation or incident."""
    return f"urn:ngsi-ld:{entity_type}:{ref}"


def parse_urn(entity_id: str) -> tuple[str, str] | None:
    """(type, our id) of an entity id of ours, or None if it is not one."""
    match = URN.fullmatch(entity_id)
    return None if match is None else (match["type"], match["ref"])


def _prop(value: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value, **{k: v for k, v in extra.items() if v is not None}}


def _geo(point: Point) -> dict[str, Any]:
    return {"type": "GeoProperty", "value": {"type": "Point", "coordinates": list(point)}}


def _measured(attribute: Attribute, value: Any, ts: str) -> dict[str, Any]:
    return _prop(attribute.convert(value), unitCode=attribute.unit_code, observedAt=ts)


def _model(device: Device) -> EntityModel:
    model = observation_model(device.kind)
    if model is None:
        raise KeyError(f"kind {device.kind} has no observation model")
    return model


def _derived(attribute: Attribute, device: Device, ts: str) -> dict[str, Any]:
    """An observation's attribute from the registry or the reading's time."""
    if attribute.name in TIME_ATTRIBUTES:
        return _prop(ts)
    if attribute.name == "location":
        return _geo(device.location)
    if attribute.name == "areaServed":
        return _prop(device.district)
    if attribute.name == "refDevice":
        return {"type": "Relationship", "object": urn(DEVICE.name, device.id)}
    raise KeyError(f"no derivation of {attribute.name}")


def observation_entity(device: Device, sample: Sample) -> Entity:
    """The device's latest observation as its kind's Smart Data Model entity."""
    model = _model(device)
    entity: Entity = {"id": urn(model.name, device.id), "type": model.name}
    for attribute in model.attributes:
        if attribute.field is None:
            entity[attribute.name] = _derived(attribute, device, sample.ts)
        elif attribute.field in sample.values:
            entity[attribute.name] = _measured(attribute, sample.values[attribute.field], sample.ts)
    return entity


def device_entity(device: Device, latest: Sample | None) -> Entity:
    """The device as a Smart Data Model `Device` (with its last health values, if any)."""
    kind = catalogue.KINDS[device.kind]
    entity: Entity = {
        "id": urn(DEVICE.name, device.id),
        "type": DEVICE.name,
        "name": _prop(device.id),
        "description": _prop(kind.description or f"{kind.name} sensor"),
        "location": _geo(device.location),
        "areaServed": _prop(device.district),
    }
    if latest is not None:
        entity["dateLastValueReported"] = _prop(latest.ts)
        for attribute in DEVICE.attributes:
            if attribute.field is not None and attribute.field in latest.values:
                entity[attribute.name] = _measured(
                    attribute, latest.values[attribute.field], latest.ts
                )
    return entity


def alert_entity(incident: Incident, location: Point) -> Entity:
    """An incident as a Smart Data Model `Alert`, located at its first device (or district)."""
    opened = format_ts(incident.opened_at)
    category = EVENT_CATEGORY.get(
        incident.event or "", "security" if incident.event else "environment"
    )
    data: dict[str, Any] = {
        "state": incident.state.value,
        "ruleType": incident.rule_type,
        "place": incident.place,
        "devices": list(incident.devices),
    }
    if incident.value is not None:
        data["value"] = incident.value
    entity: Entity = {
        "id": urn(ALERT.name, incident.id),
        "type": ALERT.name,
        "category": _prop(category),
        "subCategory": _prop(incident.rule_id),
        "severity": _prop(incident.severity.value),
        "description": _prop(incident.message or incident.rule_id),
        "dateIssued": _prop(opened),
        "validFrom": _prop(opened),
        "location": _geo(location),
        "areaServed": _prop(incident.district),
        "data": _prop(data),
    }
    if incident.devices:
        entity["alertSource"] = {
            "type": "Relationship",
            "object": urn(DEVICE.name, incident.devices[0]),
        }
    return entity


def temporal_entity(device: Device, samples: Sequence[Sample]) -> Entity:
    """The device's observations over time: each attribute an array of instances, oldest first."""
    model = _model(device)
    entity: Entity = {"id": urn(model.name, device.id), "type": model.name}
    for attribute in model.attributes:
        if attribute.field is None:
            continue
        instances = [
            _measured(attribute, s.values[attribute.field], s.ts)
            for s in samples
            if attribute.field in s.values
        ]
        if instances:
            entity[attribute.name] = instances
    return entity


def _simple(attribute: Any) -> Any:
    if attribute.get("type") == "Relationship":
        return attribute["object"]
    return attribute["value"]


def key_values(entity: Entity) -> Entity:
    """The entity's keyValues form: every attribute its bare value (or object)."""
    return {k: v if k in ("id", "type", "@context") else _simple(v) for k, v in entity.items()}


def temporal_values(entity: Entity) -> Entity:
    """A temporal entity's temporalValues form: `values` as [value, observedAt] pairs."""
    out: Entity = {}
    for name, value in entity.items():
        if name in ("id", "type", "@context"):
            out[name] = value
        else:
            out[name] = {
                "type": "Property",
                "values": [[i["value"], i["observedAt"]] for i in value],
            }
    return out


def project(entity: Entity, attrs: Iterable[str] | None) -> Entity:
    """Only the named attributes (id and type always stay)."""
    if attrs is None:
        return entity
    keep = {"id", "type", "@context", *attrs}
    return {k: v for k, v in entity.items() if k in keep}


def model_of(entity_type: str) -> EntityModel | None:
    """The entity model of a type name we serve, or None."""
    return MODELS.get(entity_type)
