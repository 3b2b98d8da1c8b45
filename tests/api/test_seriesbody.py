"""A series' body written without point models is the model's own serialization."""

from __future__ import annotations

import json

import pytest
from fastapi.routing import APIRoute
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter

from api.models import Series, SeriesPoint, Served, Window
from api.routes.cities import router
from api.seriesbody import series_body, series_response
from safecity.readings import format_epoch_ms

MS_2000, MS_2100 = 946_684_800_000, 4_102_444_800_000
texts = st.text(max_size=12)
values = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**6), 10**6).map(
    float
)
points_st = st.lists(st.tuples(st.integers(MS_2000, MS_2100), values), max_size=60)


@st.composite
def series_st(draw: st.DrawFn) -> Series:
    """A series without points: every header field drawn."""
    window = Window(**{"from": draw(texts), "to": draw(texts), "seconds": draw(values)})
    served = [
        Served(tier=draw(texts), **{"from": draw(texts), "to": draw(texts)})
        for _ in range(draw(st.integers(0, 3)))
    ]
    return Series(
        city=draw(texts),
        district=draw(st.none() | texts),
        device_id=draw(st.none() | texts),
        kind=draw(texts),
        field=draw(texts),
        unit=draw(texts),
        agg=draw(texts),
        every_s=draw(st.integers(1, 10**9)),
        window=window,
        served_by=served,
        points=[],
    )


def _by_the_model(series: Series, points: list[tuple[int, float]]) -> bytes:
    """What FastAPI sends for the `response_model` (its dump_json, by alias)."""
    full = series.model_copy(
        update={"points": [SeriesPoint(ts=format_epoch_ms(t), value=v) for t, v in points]}
    )
    return TypeAdapter(Series).dump_json(full, by_alias=True)


@given(series_st(), points_st)
def test_the_body_is_the_models_serialization_byte_for_byte(
    series: Series, points: list[tuple[int, float]]
) -> None:
    body = series_body(series, points)
    assert body == _by_the_model(series, points)
    parsed = json.loads(body)
    assert parsed["window"]["from"] == series.window.from_
    assert [(p["ts"], p["value"]) for p in parsed["points"]] == [
        (format_epoch_ms(t), v) for t, v in points
    ]


def test_a_response_is_json_of_that_body() -> None:
    series = Series(
        city="tashkent", district="chilanzar", device_id=None, kind="air_quality",
        field="pm25", unit="ug/m3", agg="mean", every_s=3600,
        window=Window(**{"from": "a", "to": "b", "seconds": 3600.0}), points=[],
    )  # fmt: skip
    points = [(1_700_000_000_000, 12.3456), (1_700_003_600_000, -0.0001)]
    response = series_response(series, points)
    assert response.media_type == "application/json"
    assert response.body == _by_the_model(series, points)


def test_a_series_with_points_is_refused() -> None:
    series = Series(
        city="c", district=None, device_id=None, kind="k", field="f", unit="u", agg="mean",
        every_s=60, window=Window(**{"from": "a", "to": "b", "seconds": 60.0}),
        points=[SeriesPoint(ts="a", value=1.0)],
    )  # fmt: skip
    with pytest.raises(ValueError, match="without points"):
        series_body(series, [])


def test_the_series_route_still_documents_the_series_model() -> None:
    route = next(
        r for r in router.routes if isinstance(r, APIRoute) and r.path.endswith("/series")
    )
    assert route.response_model is Series
