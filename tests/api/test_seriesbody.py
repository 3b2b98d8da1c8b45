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
from api.tiers import DIGITS, RAW, Part, Points
from safecity.readings import format_epoch_ms

MS_2000, MS_2100 = 946_684_800_000, 4_102_444_800_000
texts = st.text(max_size=12)
values = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**6), 10**6).map(float)
part_st = st.lists(st.tuples(st.integers(MS_2000, MS_2100), values), max_size=30)


def _window() -> Window:
    return Window(**{"from": "a", "to": "b", "seconds": 3600.0})


@st.composite
def series_st(draw: st.DrawFn) -> tuple[Series, list[Points]]:
    """A series without points (every header field drawn) and the points of its pieces."""
    window = Window(**{"from": draw(texts), "to": draw(texts), "seconds": draw(values)})
    tiers = draw(st.lists(st.sampled_from([RAW, "1h", "1d"]) | texts, max_size=4))
    served = [Served(tier=t, **{"from": draw(texts), "to": draw(texts)}) for t in tiers]
    series = Series(
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
    # What the tiers read is a Part (its JSON made once); a plain list is dumped each time.
    return series, [Part(p) if draw(st.booleans()) else p for p in (draw(part_st) for _ in tiers)]


def _by_the_model(series: Series, parts: list[Points]) -> bytes:
    """What FastAPI sends for the `response_model` (its dump_json, by alias), the values
    rounded as the series endpoints always did."""
    points = [
        SeriesPoint(ts=format_epoch_ms(t), value=round(v, DIGITS))
        for part in parts
        for t, v in part
    ]
    return TypeAdapter(Series).dump_json(
        series.model_copy(update={"points": points}), by_alias=True
    )


@given(series_st())
def test_the_body_is_the_models_serialization_byte_for_byte(
    drawn: tuple[Series, list[Points]],
) -> None:
    series, parts = drawn
    body = series_body(series, parts)
    assert body == _by_the_model(series, parts)
    assert series_body(series, parts) == body  # a Part's JSON taken from the part
    parsed = json.loads(body)
    assert parsed["window"]["from"] == series.window.from_
    assert [(p["ts"], p["value"]) for p in parsed["points"]] == [
        (format_epoch_ms(t), round(v, DIGITS)) for part in parts for t, v in part
    ]


def test_a_kept_part_is_dumped_once_and_a_plain_list_every_time() -> None:
    series = Series(
        city="tashkent", district="chilanzar", device_id=None, kind="air_quality",
        field="pm25", unit="ug/m3", agg="mean", every_s=3600, window=_window(),
        served_by=[Served(tier="1h", **{"from": "a", "to": "b"}),
                   Served(tier=RAW, **{"from": "b", "to": "c"})],
        points=[],
    )  # fmt: skip
    kept = Part([(1_700_000_000_000, 12.34567), (1_700_003_600_000, -0.0001)])
    raw = [(1_700_007_200_000, 3.0)]
    response = series_response(series, [kept, raw])
    assert response.media_type == "application/json"
    assert response.body == _by_the_model(series, [kept, raw])
    made = kept.json
    assert made is not None
    # The kept part's JSON is its own, made once; a plain list is dumped every time.
    raw.append((1_700_010_800_000, 4.0))
    assert series_body(series, [kept, raw]) == _by_the_model(series, [kept, raw])
    assert kept.json is made
    assert series_body(series, [Part(kept), raw]) == _by_the_model(series, [kept, raw])


def test_a_series_with_points_is_refused() -> None:
    series = Series(
        city="c", district=None, device_id=None, kind="k", field="f", unit="u", agg="mean",
        every_s=60, window=_window(), points=[SeriesPoint(ts="a", value=1.0)],
    )  # fmt: skip
    with pytest.raises(ValueError, match="without points"):
        series_body(series, [])
    with pytest.raises(ValueError, match="one part a piece"):
        series_body(series.model_copy(update={"points": []}), [[(0, 1.0)]])


def test_the_series_route_still_documents_the_series_model() -> None:
    route = next(r for r in router.routes if isinstance(r, APIRoute) and r.path.endswith("/series"))
    assert route.response_model is Series
