"""The telemetry contract as msgspec structs generated from the catalogue: a C-backed fast path.

`safecity.readings` (pydantic) stays the documented schema and the only source of
rejections. `TelemetryLines.line` only ever *accepts*: it returns the seq, time and
line-protocol line of a reading `readings.parse` accepts, or None whenever it cannot be
sure, and the caller then runs `readings.parse`. So a refusal, and its reason code,
always comes from the pydantic models; `tests/safecity/test_fastcontract.py` checks on
generated inputs that every acceptance here is one `parse` makes, with the same line.

Where msgspec is laxer than the contract it is fenced after decoding: duplicate keys
(msgspec keeps the last; the contract refuses them) by counting the payload's quotes,
and the timestamp by the contract's own pattern.

The line is built by one `str.format` call per reading, with a template per kind and
set of present fields (and their types), made once: the field set is the one
`lineprotocol.encode` writes for these typed values.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Annotated, Any, Literal

import msgspec

from safecity import catalogue
from safecity.catalogue import Quantity
from safecity.lineprotocol import field_key
from safecity.readings import (
    _MAX_EPOCH_MS,
    EPOCH,
    MAX_PAYLOAD_BYTES,
    MAX_SEQ,
    _to_utc,
    epoch_ms,
)

__all__ = ["TelemetryLines", "decode_telemetry", "telemetry_lines", "window_ms"]

_SEQ = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
# The usual spelling (ms and Z); anything else the contract allows goes through `_to_utc`.
_CANONICAL_TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
_MS = timedelta(milliseconds=1)
_US = timedelta(microseconds=1)
_FROM_ISO = datetime.fromisoformat
_NONE = type(None)
_ASTUPLE = msgspec.structs.astuple
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError)


def window_ms(now: datetime | None, past: timedelta, future: timedelta) -> tuple[int, int]:
    """The epoch-ms bounds [low, high] of the contract's window `now - past <= ts <= now +
    future` for a millisecond timestamp (exact: computed in microseconds)."""
    current = now or datetime.now(UTC)
    low_us = (current - past - EPOCH) // _US
    high_us = (current + future - EPOCH) // _US
    return -(-low_us // 1000), high_us // 1000


def _annotation(q: Quantity) -> Any:
    if q.type == "float":
        return Annotated[float, msgspec.Meta(ge=q.low, le=q.high)]
    if q.type == "int":
        return Annotated[int, msgspec.Meta(ge=q.low, le=q.high)]
    if q.type == "bool":
        return bool
    return Literal[q.choices]


def _placeholder(index: int, declared: str, actual: type) -> str | None:
    """The template text of one present field's value, as `lineprotocol._field` writes it;
    None for a type this path does not expect (the caller then asks the contract)."""
    if declared == "float" and actual is float:
        return f"{{{index}!r}}"
    if declared == "int" and actual is int:
        return f"{{{index}}}i"
    if declared == "bool" and actual is bool:
        return f"{{{index}}}"  # the value is swapped for "true" / "false" first
    if declared == "enum" and actual is str:
        return f'"{{{index}}}"'  # choices need no escaping (checked when built)
    return None


class TelemetryLines:
    """One kind's reading decoder and line templates."""

    __slots__ = ("_bools", "_decode", "_order", "_templates")

    def __init__(self, kind: str) -> None:
        quantities = catalogue.telemetry_quantities(kind)
        fields: list[tuple[str, Any, Any]] = []
        for q in quantities:
            annotation = _annotation(q)
            if q.required:
                fields.append((q.name, annotation, msgspec.NODEFAULT))
            else:
                fields.append((q.name, annotation | None, None))
        # Required fields first: a struct's defaulted fields must follow the others.
        fields.sort(key=lambda f: f[2] is not msgspec.NODEFAULT)
        values = msgspec.defstruct(
            f"{kind}_values",
            [(n, a) if d is msgspec.NODEFAULT else (n, a, d) for n, a, d in fields],
            forbid_unknown_fields=True,
            frozen=True,
            array_like=False,
            gc=False,  # scalars only: no cycles, and nothing for the collector to walk
        )
        envelope = msgspec.defstruct(
            f"{kind}_reading",
            [("ts", str | int), ("seq", _SEQ), ("values", values)],
            forbid_unknown_fields=True,
            frozen=True,
            gc=False,
        )
        decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(envelope, strict=True)
        self._decode = decoder.decode
        names = [f[0] for f in fields]  # the struct's field order (astuple's order)
        declared = {q.name: q.type for q in quantities}
        # (position in the format arguments, `key=`, declared type) in line order: the
        # arguments are (series, *values, seq, ts_ms).
        self._order = sorted(
            [(len(names) + 1, field_key("seq"), "int")]
            + [(i + 1, field_key(n), declared[n]) for i, n in enumerate(names)],
            key=lambda o: o[1],
        )
        self._bools = tuple(i for i, n in enumerate(names) if declared[n] == "bool")
        self._templates: dict[tuple[type, ...], tuple[str | None, int]] = {}

    def _template(self, types: tuple[type, ...]) -> tuple[str | None, int]:
        """The line template of readings whose values have these types (None: a type this
        path does not expect), and the quotes such a payload has besides the ts's."""
        parts = []
        strings = 3  # the keys ts, seq and values
        for index, key, declared in self._order:
            actual = int if index == len(types) + 1 else types[index - 1]
            if actual is _NONE:
                continue
            text = _placeholder(index, declared, actual)
            if text is None:
                return None, 0
            if index <= len(types):
                strings += 2 if actual is str else 1  # its key (and a string value)
            parts.append(key.replace("{", "{{").replace("}", "}}") + text)
        return "{0} " + ",".join(parts) + f" {{{len(types) + 2}}}", 2 * strings

    def line(self, payload: bytes, series: str, low: int, high: int) -> tuple[int, int, str] | None:
        """(seq, ts in epoch ms, line) of a reading `readings.parse` accepts with its ts in
        [low, high] (see `window_ms`), written as `series`; None when this path cannot
        decide (the caller then asks `readings.parse`)."""
        if len(payload) > MAX_PAYLOAD_BYTES:
            return None
        try:
            message = self._decode(payload)
        except _DECODE_ERRORS:
            return None
        values = _ASTUPLE(message.values)
        types = tuple(map(type, values))
        known = self._templates.get(types)
        if known is None:
            known = self._templates[types] = self._template(types)
        template, quotes = known
        ts = message.ts
        # Every key and string value is one pair of quotes, and an escaped quote only adds
        # one: as many quotes as the decoded keys and strings need means no key was
        # repeated (msgspec keeps the last; the contract refuses) and none sent as null.
        if template is None or payload.count(b'"') != (quotes + 2 if type(ts) is str else quotes):
            return None
        ts_ms = _ts_ms(ts)
        if ts_ms is None or not low <= ts_ms <= high:
            return None
        if self._bools:
            values = self._spelt_bools(values)
        seq: int = message.seq
        return seq, ts_ms, template.format(series, *values, seq, ts_ms)

    def _spelt_bools(self, values: tuple[Any, ...]) -> tuple[Any, ...]:
        """`values` with the booleans spelt as the line protocol wants them."""
        swapped = list(values)
        for i in self._bools:
            if swapped[i] is not None:
                swapped[i] = "true" if swapped[i] else "false"
        return tuple(swapped)


def _ts_ms(ts: str | int) -> int | None:
    """A decoded ts in epoch ms; None when the contract would refuse it."""
    if not isinstance(ts, str):
        return ts if 0 <= ts <= _MAX_EPOCH_MS else None
    try:
        if _CANONICAL_TS.fullmatch(ts) is not None:
            return (_FROM_ISO(ts) - EPOCH) // _MS
        return epoch_ms(_to_utc(ts))
    except ValueError:
        return None


@cache
def telemetry_lines(kind: str) -> TelemetryLines | None:
    """The fast path of `kind`'s readings; None for a kind it does not cover (an enum
    without choices is free text: its pattern is pydantic's alone)."""
    quantities = catalogue.telemetry_quantities(kind)
    if any(q.type == "enum" and not q.choices for q in quantities):
        return None
    if any(set('"\\\n\r\x00') & set("".join(q.choices)) for q in quantities):
        return None  # a choice that would need escaping in a line
    return TelemetryLines(kind)


def decode_telemetry(
    kind: str, payload: bytes, series: str, now: datetime | None, past: timedelta, future: timedelta
) -> tuple[int, int, str] | None:
    """`TelemetryLines.line` of `kind` with the window of `now`, `past` and `future`."""
    lines = telemetry_lines(kind)
    if lines is None:
        return None
    return lines.line(payload, series, *window_ms(now, past, future))
