"""Incident response-time figures: time to acknowledge and to resolve, by type and district."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from safecity.incidents.model import Incident


@dataclass(frozen=True, slots=True)
class Figure:
    """Response-time figures of one (type, district) group, in seconds."""

    rule_id: str
    district: str
    incidents: int
    open: int
    acknowledged: int
    resolved: int
    tta_mean: float | None
    tta_median: float | None
    tta_max: float | None
    ttr_mean: float | None
    ttr_median: float | None
    ttr_max: float | None


def _stats(values: list[float]) -> tuple[float | None, float | None, float | None]:
    if not values:
        return None, None, None
    return statistics.fmean(values), statistics.median(values), max(values)


def figures(
    incidents: Iterable[Incident], *, by_district: bool = True, by_type: bool = True
) -> list[Figure]:
    """Time to acknowledge and time to resolve, grouped by type (rule) and/or district."""
    groups: dict[tuple[str, str], list[Incident]] = {}
    for inc in incidents:
        key = (inc.rule_id if by_type else "*", inc.district if by_district else "*")
        groups.setdefault(key, []).append(inc)
    out = []
    for (rule_id, district), members in sorted(groups.items()):
        tta = [x for x in (i.time_to_acknowledge for i in members) if x is not None]
        ttr = [x for x in (i.time_to_resolve for i in members) if x is not None]
        out.append(
            Figure(
                rule_id,
                district,
                len(members),
                sum(1 for i in members if not i.resolved),
                len(tta),
                len(ttr),
                *_stats(tta),
                *_stats(ttr),
            )
        )
    return out
