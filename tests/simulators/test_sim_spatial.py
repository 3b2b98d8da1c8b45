"""The grid index answers exactly what a full scan answers: nearest (first of equals) and
the count within a radius; a city's profiles built with it equal those of the quadratic scan."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from safecity.citygen import generate
from simulators.sites import GUNSHOT_RANGE_M, World, process_key
from simulators.spatial import Grid
from simulators.timebase import distance_m


@dataclass(frozen=True)
class Spot:
    """A located thing."""

    location: tuple[float, float]


# Points around Tashkent and Astana (51 N: the east-west scale matters), some stacked.
lon = st.floats(69.0, 69.5) | st.sampled_from([69.25])
lat = st.floats(41.1, 41.5) | st.floats(51.0, 51.3) | st.sampled_from([41.3])
points = st.tuples(lon, lat)


def _scan_nearest(items: list[Spot], point: tuple[float, float]) -> Spot:
    return min(items, key=lambda i: distance_m(i.location, point))


@settings(max_examples=60, deadline=None)
@given(st.lists(points, min_size=1, max_size=80), st.lists(points, min_size=1, max_size=20))
def test_nearest_is_the_full_scans_answer(where: list[tuple[float, float]], asks: list) -> None:
    items = [Spot(p) for p in where]
    grid = Grid(items, (min(p[1] for p in asks), max(p[1] for p in asks)))
    for point in asks:
        assert grid.nearest(point) is _scan_nearest(items, point)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(points, max_size=80),
    st.lists(points, min_size=1, max_size=20),
    st.floats(10.0, 20_000.0),
    st.sampled_from([None, 200.0, 3000.0]),
)
def test_count_within_is_the_full_scans_count(
    where: list[tuple[float, float]], asks: list, radius: float, cell: float | None
) -> None:
    items = [Spot(p) for p in where]
    grid = Grid(items, (min(p[1] for p in asks), max(p[1] for p in asks)), cell_m=cell)
    for point in asks:
        expected = sum(1 for i in items if distance_m(i.location, point) <= radius)
        assert grid.count_within(point, radius) == expected


def test_an_empty_grid_has_no_nearest() -> None:
    assert Grid([], (41.0, 41.0)).nearest((69.2, 41.3)) is None


def test_a_citys_profiles_are_the_full_scans() -> None:
    city = generate("scanville", 1500, 5)
    world = World(city)
    roads, crowds = city.select(kind="traffic"), city.select(kind="crowd")
    nodes = city.select(kind="gunshot")
    assert roads and crowds and nodes
    for device in city.devices:
        profile = world.profile(device)
        if device.kind != "traffic":
            road = min(roads, key=lambda r: distance_m(r.location, device.location))
            assert profile.road_key == process_key(road.id)
        if device.kind == "cctv":
            crowd = min(crowds, key=lambda r: distance_m(r.location, device.location))
            assert profile.crowd_key == process_key(crowd.id)
        heard = sum(1 for n in nodes if distance_m(n.location, device.location) <= GUNSHOT_RANGE_M)
        assert profile.heard_by == max(1, heard)
