"""The NGSI-LD query language: `q` parsed into terms that filter as Python compares, the
OpenAPI pattern and the parser agreeing, geo-queries and their refusals."""

from __future__ import annotations

import json
import operator
import re

import pytest
from fastapi import HTTPException
from hypothesis import given
from hypothesis import strategies as st

from api.ngsild_query import GEOREL_PATTERN, Q_PATTERN, distance_m, geo_filter, parse_q

ATTRS = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,10}", fullmatch=True)
OPS = {"==": operator.eq, "!=": operator.ne, ">": operator.gt, ">=": operator.ge}
OPS |= {"<": operator.lt, "<=": operator.le}
NUMBERS = st.decimals(min_value=-(10**6), max_value=10**6, places=3, allow_nan=False)


def entity(**values: object) -> dict[str, object]:
    return {"id": "urn:ngsi-ld:X:1", "type": "X"} | {
        k: {"type": "Property", "value": v} for k, v in values.items()
    }


@given(attr=ATTRS, op=st.sampled_from(sorted(OPS)), bound=NUMBERS, have=NUMBERS)
def test_a_number_term_filters_as_python_compares(
    attr: str, op: str, bound: object, have: object
) -> None:
    q = f"{attr}{op}{bound}"
    assert re.fullmatch(Q_PATTERN, q)
    (term,) = parse_q(q)
    assert term.matches(entity(**{attr: float(str(have))})) == OPS[op](
        float(str(have)), float(str(bound))
    )


@given(
    text=st.text(
        st.characters(blacklist_characters='";\\', blacklist_categories=("Cs",)), max_size=20
    ),
    other=st.text(max_size=5),
)
def test_string_terms_and_and_lists(text: str, other: str) -> None:
    q = f'name=="{text}";level>=3'
    assert re.fullmatch(Q_PATTERN, q)
    terms = parse_q(q)
    assert len(terms) == 2
    assert all(t.matches(entity(name=text, level=3)) for t in terms)
    assert not all(t.matches(entity(name=text + "x", level=3)) for t in terms)
    # A missing attribute never matches; one of another type differs.
    assert not terms[0].matches(entity(level=3))
    assert parse_q("name!=1")[0].matches(entity(name=other))


@given(st.text(max_size=40))
def test_the_parser_accepts_exactly_what_the_published_pattern_allows(q: str) -> None:
    if re.fullmatch(Q_PATTERN, q) is not None:
        assert parse_q(q)
    else:
        with pytest.raises(HTTPException) as refused:
            parse_q(q)
        assert refused.value.status_code == 400


def test_booleans_compare_only_for_equality() -> None:
    assert parse_q("congested==true")[0].matches(entity(congested=True))
    assert not parse_q("congested==true")[0].matches(entity(congested=False))
    assert not parse_q("congested>false")[0].matches(entity(congested=True))
    assert not parse_q("congested==1")[0].matches(entity(congested=True))


def located(lon: float, lat: float) -> dict[str, object]:
    return {
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}}
    }


def test_near_and_within() -> None:
    near = geo_filter("near;maxDistance==1000", "Point", "[69.0, 41.0]", None)
    assert near is not None
    assert near(located(69.0, 41.0 + 0.0089))  # about 990 m north
    assert not near(located(69.0, 41.0 + 0.0091))  # about 1012 m
    far = geo_filter("near;minDistance==1000", "Point", "[69.0, 41.0]", "location")
    assert far is not None and far(located(69.0, 41.01)) and not far(located(69.0, 41.0))
    square = json.dumps([[[69, 41], [70, 41], [70, 42], [69, 42], [69, 41]]])
    within = geo_filter("within", "Polygon", square, None)
    assert within is not None and within(located(69.5, 41.5)) and not within(located(70.5, 41.5))
    assert geo_filter(None, None, None, "location") is None
    assert round(distance_m((0, 0), (0, 1))) == 111_195


@pytest.mark.parametrize(
    ("georel", "geometry", "coordinates", "reason"),
    [
        ("near;maxDistance==5", None, "[0, 0]", "together"),
        ("within", "Point", "[0, 0]", "supported"),
        ("within", "Polygon", "[[[0,0],[1,0],[0,0]]]", "4+ positions"),
        ("within", "Polygon", "[[[0,0],[1,0],[1,1],[0,1]]]", "first = last"),
        ("near;maxDistance==5", "Point", "[200, 0]", "[lon, lat]"),
        ("near;maxDistance==5", "Point", "nope", "not a JSON array"),
    ],
)
def test_bad_geo_queries_are_refused_with_the_reason(
    georel: str, geometry: str | None, coordinates: str, reason: str
) -> None:
    assert re.fullmatch(GEOREL_PATTERN, georel)
    with pytest.raises(HTTPException) as refused:
        geo_filter(georel, geometry, coordinates, None)
    assert refused.value.status_code == 400
    assert reason in str(refused.value.detail)
