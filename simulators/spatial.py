"""A grid index of devices' locations: the nearest one and those within a radius, exactly.

Building a city's profiles asks, for every device, for the nearest traffic sensor and
crowd counter and for the acoustic nodes within range; comparing every device with
every candidate is quadratic (50,000 devices took minutes). The grid answers both
questions from the cells around a point, with the same distances
(`timebase.distance_m`) and the same tie-break (the earlier item) as a full scan.

Why it is exact: cells are squares of a local projection whose east-west scale is
the smallest cosine of latitude over the indexed points and the queries (`lats`, the
range of the queries' latitudes), so the projected distance between two points never
exceeds their `distance_m`, and exceeds it at most by the ratio of the largest to the
smallest cosine. An item outside the `r` rings of cells around the query's cell is at
least ``r * cell`` metres away, so the search for the nearest stops at the first ring
beyond which nothing can be nearer than the best found; a count within a radius takes,
row by row, the run of cells whose farthest corners are inside (stretched by that
ratio) whole, by bisection, and checks the items of the cells the circle cuts one by one.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

from simulators.timebase import EARTH_M_PER_DEG, distance_m


class Located(Protocol):
    """Anything with a [lon, lat] location."""

    @property
    def location(self) -> tuple[float, float]:
        """[lon, lat], degrees."""
        ...


T = TypeVar("T", bound=Located)

_MARGIN = 1.0 - 1e-9
"""Round-off guard on the ring bound: stop only when clearly nothing outside can tie."""


class Grid(Generic[T]):
    """Items on a grid of square cells of `cell_m` metres (by default ~2 items a cell)."""

    def __init__(
        self, items: Sequence[T], lats: tuple[float, float], cell_m: float | None = None
    ) -> None:
        self.items = list(items)
        low = min([abs(lats[0]), abs(lats[1]), *(abs(i.location[1]) for i in self.items)])
        high = max([abs(lats[0]), abs(lats[1]), *(abs(i.location[1]) for i in self.items)])
        # The smallest cosine over the area: projected distances never exceed real ones;
        # real ones exceed them by at most `_stretch` (the largest over the smallest).
        self._cos = math.cos(math.radians(min(89.0, high)))
        self._stretch = math.cos(math.radians(min(89.0, low))) / self._cos
        self.cell = cell_m if cell_m is not None else self._cell_size()
        self._cells: dict[tuple[int, int], list[int]] = {}
        for n, item in enumerate(self.items):
            self._cells.setdefault(self._cell_of(item.location), []).append(n)
        # Per row of cells: the items' column and index, sorted by column (for counting).
        self._rows: dict[int, tuple[list[int], list[int]]] = {}
        for (col, row), members in sorted(self._cells.items(), key=lambda e: (e[0][1], e[0][0])):
            xs, ids = self._rows.setdefault(row, ([], []))
            xs.extend([col] * len(members))
            ids.extend(members)

    def nearest(self, point: tuple[float, float]) -> T | None:
        """The item nearest to `point` (the first of equals in `items` order), or None."""
        if not self.items:
            return None
        cx, cy = self._cell_of(point)
        best: tuple[float, int] | None = None
        ring = seen = 0
        while seen < len(self.items):
            if (2 * ring + 1) ** 2 >= len(self.items):
                # Far from everything (or few items): a scan costs less than more rings.
                return min(self.items, key=lambda i: distance_m(i.location, point))
            for n in self._ring(cx, cy, ring):
                seen += 1
                candidate = (distance_m(self.items[n].location, point), n)
                if best is None or candidate < best:
                    best = candidate
            ring += 1
            # Whatever was not seen yet lies at least `(ring - 1) * cell` away (projected).
            if best is not None and best[0] < (ring - 1) * self.cell * _MARGIN:
                break
        assert best is not None
        return self.items[best[1]]

    def count_within(self, point: tuple[float, float], radius_m: float) -> int:
        """How many items lie at most `radius_m` from `point` (exactly as a scan counts)."""
        px, py = self._projected(point)
        c = self.cell
        # Real distances exceed projected ones at most `_stretch`-fold: cells wholly
        # within `sure` (projected) are inside for real and are counted without distances.
        sure = radius_m * _MARGIN / self._stretch
        lo, hi = math.floor((px - radius_m) / c), math.floor((px + radius_m) / c)
        count = 0
        for row in range(math.floor((py - radius_m) / c), math.floor((py + radius_m) / c) + 1):
            found = self._rows.get(row)
            if found is None:
                continue
            xs, ids = found
            first, last = bisect_left(xs, lo), bisect_right(xs, hi)
            far_y = max(abs(py - row * c), abs(py - (row + 1) * c))
            inner_a = inner_b = first
            if far_y < sure:
                half = math.sqrt(sure * sure - far_y * far_y)
                inner_lo, inner_hi = math.ceil((px - half) / c), math.floor((px + half) / c) - 1
                if inner_lo <= inner_hi:
                    inner_a, inner_b = bisect_left(xs, inner_lo), bisect_right(xs, inner_hi)
                    count += inner_b - inner_a
            for n in (*ids[first:inner_a], *ids[inner_b:last]):
                if distance_m(self.items[n].location, point) <= radius_m:
                    count += 1
        return count

    def _ring(self, cx: int, cy: int, ring: int) -> list[int]:
        """Indices of the items in the cells exactly `ring` cells from (cx, cy)."""
        if ring == 0:
            return self._cells.get((cx, cy), [])
        out: list[int] = []
        for dx in range(-ring, ring + 1):
            step = 1 if abs(dx) == ring else 2 * ring
            for dy in range(-ring, ring + 1, step):
                out.extend(self._cells.get((cx + dx, cy + dy), ()))
        return out

    def _projected(self, point: tuple[float, float]) -> tuple[float, float]:
        return point[0] * EARTH_M_PER_DEG * self._cos, point[1] * EARTH_M_PER_DEG

    def _cell_of(self, point: tuple[float, float]) -> tuple[int, int]:
        x, y = self._projected(point)
        return math.floor(x / self.cell), math.floor(y / self.cell)

    def _cell_size(self) -> float:
        """About two items a cell over the items' bounding box (at least 50 m)."""
        if len(self.items) < 2:
            return 1000.0
        xs = [i.location[0] * EARTH_M_PER_DEG * self._cos for i in self.items]
        ys = [i.location[1] * EARTH_M_PER_DEG for i in self.items]
        area = max(1.0, (max(xs) - min(xs)) * (max(ys) - min(ys)))
        return max(50.0, math.sqrt(2.0 * area / len(self.items)))
