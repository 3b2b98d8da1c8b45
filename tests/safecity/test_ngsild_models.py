"""Every entity we emit, checked against the official FIWARE Smart Data Models as the
maintained `pysmartdatamodels` package distributes them (its attribute database: the
top-level attributes of each model, their JSON and NGSI-LD types, enumerations and
context IRIs) and against the NGSI-LD entity model of the `ngsildclient` library."""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

import pysmartdatamodels
import pytest
from hypothesis import given
from hypothesis import strategies as st
from ngsildclient import Entity as ClientEntity

from safecity import catalogue, ngsild_models
from safecity import incidents as inc
from safecity.ngsild_entities import (
    Sample,
    alert_entity,
    device_entity,
    key_values,
    observation_entity,
    parse_urn,
)
from safecity.ngsild_models import ALERT, DEVICE, MODELS, OBSERVATIONS, EntityModel
from safecity.readings import format_ts
from safecity.registry import Device, default_city

CITY = default_city()
TS = format_ts(datetime(2026, 1, 15, 6, 0, tzinfo=UTC))
JSON_TYPES: dict[type, str] = {float: "number", int: "number", bool: "boolean", str: "string"}
JSON_TYPES |= {dict: "object", list: "array"}


@cache
def sdm_attributes() -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(data model, attribute) -> the package's records of that top-level attribute."""
    path = resources.files(pysmartdatamodels).joinpath("model-assets", "smartdatamodels.json.gz")
    with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        records = json.load(f)
    out: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if "parentId" not in record:
            out[record["dataModel"], record["property"]].append(record)
    return dict(out)


def full_values(kind: str) -> dict[str, Any]:
    """A value for every telemetry field of the kind (health included)."""
    values: dict[str, Any] = {}
    for q in catalogue.telemetry_quantities(kind):
        if q.type == "bool":
            values[q.name] = True
        elif q.type == "enum":
            values[q.name] = q.choices[-1] if q.choices else "x"
        else:
            low, high = q.low or 0, q.high or 1
            middle = (low + high) / 2
            values[q.name] = int(middle) if q.type == "int" else float(middle)
    return values


def device_of(kind: str) -> Device:
    return next(d for d in CITY.devices if d.kind == kind)


def every_entity() -> list[tuple[EntityModel, dict[str, Any]]]:
    """One entity of every type we emit, every attribute filled."""
    out = [
        (model, observation_entity(device_of(kind), Sample(TS, full_values(kind))))
        for kind, model in OBSERVATIONS.items()
    ]
    weather = device_of("weather")
    out.append((DEVICE, device_entity(weather, Sample(TS, full_values("weather")))))
    cam = device_of("cctv")
    incident = inc.open_incident(
        city=CITY.id,
        district=cam.district,
        rule_id="intrusion",
        rule_type="event",
        severity="critical",
        place=cam.district,
        devices=[cam.id],
        opened_at=datetime(2026, 1, 15, tzinfo=UTC),
        value=2.0,
        message="m",
        event="intrusion",
    )
    out.append((ALERT, alert_entity(incident, cam.location)))
    return out


ENTITIES = every_entity()


@pytest.mark.parametrize(("model", "entity"), ENTITIES, ids=lambda x: getattr(x, "name", ""))
def test_every_attribute_is_the_smart_data_models_own(
    model: EntityModel, entity: dict[str, Any]
) -> None:
    known = sdm_attributes()
    assert entity["type"] == model.name
    for name, attribute in entity.items():
        if name in ("id", "type"):
            continue
        records = known.get((model.name, name))
        assert records, f"{model.name}.{name}: not an attribute of the Smart Data Model"
        json_types = {r.get("type") for r in records}
        ngsi_types = {r.get("typeNGSI") for r in records} - {None}
        value = attribute.get("object", attribute.get("value"))
        assert JSON_TYPES[type(value)] in json_types, (name, value, json_types)
        assert not ngsi_types or attribute["type"] in ngsi_types, (name, ngsi_types)
        enums = [r["enum"] for r in records if "enum" in r]
        assert not enums or value in enums[0], (name, value, enums[0])


@pytest.mark.parametrize("model", list(MODELS.values()), ids=lambda m: m.name)
def test_the_context_iris_are_the_smart_data_models_own(model: EntityModel) -> None:
    known = sdm_attributes()
    for attribute in model.attributes:
        records = known[model.name, attribute.name]
        assert model.iri(attribute) in {r["context"] for r in records}, attribute.name
    assert pysmartdatamodels.datamodel_repolink(model.name)
    assert model.name in pysmartdatamodels.datamodels_subject(model.subject)


def test_every_field_of_every_kind_is_mapped_or_stated() -> None:
    for kind, model in OBSERVATIONS.items():
        mapped = {a.field for a in model.attributes if a.field is not None}
        stated = {f for f, _ in model.unmapped}
        fields = {q.name for q in catalogue.telemetry_quantities(kind)}
        assert fields == mapped | stated, kind
        assert not mapped & stated, kind
        assert catalogue.KINDS[kind].data_model.lower() == model.name.lower() or kind == "parking"
    health = {q.name for q in catalogue.HEALTH}
    assert health == {a.field for a in DEVICE.attributes if a.field} | {
        f for f, _ in DEVICE.unmapped
    }


@pytest.mark.parametrize(("model", "entity"), ENTITIES, ids=lambda x: getattr(x, "name", ""))
def test_the_ngsild_client_library_reads_each_entity_as_we_wrote_it(
    model: EntityModel, entity: dict[str, Any]
) -> None:
    parsed = ClientEntity.from_dict(entity)
    assert parsed.id == entity["id"] and parsed.type == model.name
    written = parsed.to_dict()
    written.pop("@context", None)
    assert written == entity
    assert parse_urn(entity["id"]) is not None
    for name, attribute in entity.items():
        if name not in ("id", "type"):
            assert attribute["type"] in ("Property", "GeoProperty", "Relationship")
            assert parsed[name] is not None


def test_the_packaged_context_is_the_generated_one() -> None:
    assert ngsild_models.packaged_context() == ngsild_models.render_context()


@given(
    laeq=st.floats(20, 140, allow_nan=False),
    lamax=st.floats(20, 150, allow_nan=False),
    la90=st.floats(20, 140, allow_nan=False),
)
def test_key_values_keep_every_value_of_the_normalized_form(
    laeq: float, lamax: float, la90: float
) -> None:
    device = device_of("noise")
    entity = observation_entity(device, Sample(TS, {"laeq": laeq, "lamax": lamax, "la90": la90}))
    simple = key_values(entity)
    assert simple["LAeq"] == laeq and simple["LAmax"] == lamax and "la90" not in simple
    assert simple["refDevice"] == f"urn:ngsi-ld:Device:{device.id}"
    assert entity["LAeq"]["observedAt"] == TS
