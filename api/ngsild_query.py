"""The NGSI-LD query language we serve: `q` (simple attribute filters joined by `;`),
geo-queries (`near;maxDistance==`/`minDistance==` to a Point, `within` a Polygon) and
the paging and form options; every refusal a `BadRequestData` naming the parameter."""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from api.ngsild_errors import bad_request
from safecity.citygen import contains
from safecity.ngsild_entities import Entity

EARTH_RADIUS_M = 6_371_008.8
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
_ATTRIBUTE = r"[A-Za-z][A-Za-z0-9_]{0,63}"
_OP = r"==|!=|>=|<=|>|<"
_NUMBER = r"-?[0-9]{1,15}(\.[0-9]{1,15})?"
_STRING = r'"[^";\\]{0,200}"'
_VALUE = rf"{_NUMBER}|true|false|{_STRING}"
_TERM = re.compile(rf"^(?P<attr>{_ATTRIBUTE})(?P<op>{_OP})(?P<value>{_VALUE})$")
_ONE = rf"{_ATTRIBUTE}({_OP})({_VALUE})"
Q_PATTERN = rf"^{_ONE}(;{_ONE})*$"
"""What `q` may be: terms `attribute<op>value` joined by `;` (and)."""
GEOREL_PATTERN = r"^(near;(maxDistance|minDistance)==[0-9]{1,9}(\.[0-9]{1,6})?|within)$"
_OPTION = "keyValues|normalized|sysAttrs|count|temporalValues"
OPTIONS_PATTERN = rf"^({_OPTION})(,({_OPTION}))*$"
_NEAR = re.compile(r"^near;(?P<which>maxDistance|minDistance)==(?P<metres>[0-9]+(\.[0-9]+)?)$")


@dataclass(frozen=True, slots=True)
class Term:
    """One `attr op value` of `q`."""

    attribute: str
    op: str
    value: float | bool | str

    def matches(self, entity: Entity) -> bool:
        """Whether the entity's attribute (normalized form) satisfies the term."""
        attribute = entity.get(self.attribute)
        if not isinstance(attribute, dict):
            return False
        have = attribute.get("object", attribute.get("value"))
        if isinstance(self.value, bool) or isinstance(have, bool):
            # true/false are equal or not; they have no order.
            if type(have) is not type(self.value) or self.op not in ("==", "!="):
                return self.op == "!="
        elif isinstance(self.value, float) != isinstance(have, int | float):
            return self.op == "!="
        if not isinstance(have, int | float | str):
            return self.op == "!="
        return _OPS[self.op](have, self.value)


def _literal(raw: str) -> float | bool | str:
    if raw in ("true", "false"):
        return raw == "true"
    if raw.startswith('"'):
        return raw[1:-1]
    return float(raw)


def parse_q(q: str) -> tuple[Term, ...]:
    """The terms of `q` (`;` = and); anything else (or, parentheses, ranges) is refused.

    Strings compare in code-point order; `!=` holds for an attribute of another type.
    """
    terms = []
    for part in q.split(";"):
        match = _TERM.fullmatch(part)
        if match is None:
            raise bad_request(
                f"q: {part!r} is not a simple filter `attribute<op>value` "
                "(ops ==, !=, >, >=, <, <=; terms joined by ;)"
            )
        terms.append(Term(match["attr"], match["op"], _literal(match["value"])))
    return tuple(terms)


def distance_m(a: Sequence[float], b: Sequence[float]) -> float:
    """Great-circle distance in metres between two [lon, lat] points."""
    lon1, lat1, lon2, lat2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def _position(raw: Any) -> tuple[float, float]:
    if (
        not isinstance(raw, list)
        or len(raw) != 2
        or not all(isinstance(c, int | float) and not isinstance(c, bool) for c in raw)
        or not (-180 <= raw[0] <= 180 and -90 <= raw[1] <= 90)
    ):
        raise bad_request(f"coordinates: {json.dumps(raw)[:80]} is not a [lon, lat] position")
    return float(raw[0]), float(raw[1])


def _coordinates(geometry: str, coordinates: str) -> Any:
    try:
        raw = json.loads(coordinates)
    except ValueError:
        raise bad_request("coordinates: not a JSON array") from None
    if geometry == "Point":
        return _position(raw)
    if not isinstance(raw, list) or len(raw) != 1 or not isinstance(raw[0], list):
        raise bad_request("coordinates: a Polygon is [[[lon, lat], ...]] (one ring)")
    ring = [_position(p) for p in raw[0]]
    if len(ring) < 4 or ring[0] != ring[-1]:
        raise bad_request("coordinates: a Polygon's ring has 4+ positions, first = last")
    return ring


def geo_filter(
    georel: str | None, geometry: str | None, coordinates: str | None, geoproperty: str | None
) -> Callable[[Entity], bool] | None:
    """A predicate on an entity's `location` from the geo-query parameters (None: none)."""
    if georel is None and geometry is None and coordinates is None:
        return None
    if georel is None or geometry is None or coordinates is None:
        raise bad_request("a geo-query needs georel, geometry and coordinates together")
    if geoproperty not in (None, "location"):
        raise bad_request(f"geoproperty: only location is a GeoProperty here, not {geoproperty!r}")
    near = _NEAR.fullmatch(georel)
    if near is not None and geometry == "Point":
        centre = _coordinates(geometry, coordinates)
        metres, closer = float(near["metres"]), near["which"] == "maxDistance"
        return lambda e: (distance_m(_point(e), centre) <= metres) == closer
    if georel == "within" and geometry == "Polygon":
        ring = _coordinates(geometry, coordinates)
        return lambda e: contains(ring, *_point(e))
    raise bad_request(
        f"georel {georel!r} with geometry {geometry!r}: supported are "
        "near;maxDistance==<m> / near;minDistance==<m> with a Point, within with a Polygon"
    )


def _point(entity: Entity) -> tuple[float, float]:
    lon, lat = entity["location"]["value"]["coordinates"]
    return float(lon), float(lat)


def split_list(raw: str | None) -> tuple[str, ...] | None:
    """A comma-separated parameter as its items (None if absent; empty items dropped)."""
    if raw is None:
        return None
    return tuple(item for item in raw.split(",") if item)


def simplified(options: str | None, form: str | None) -> bool:
    """Whether the simplified form (keyValues / temporalValues) was asked for."""
    asked = set(split_list(options) or ())
    return bool(asked & {"keyValues", "temporalValues"}) or form in (
        "simplified",
        "keyValues",
        "temporalValues",
    )
