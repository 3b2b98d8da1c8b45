"""The telemetry contract as msgspec structs generated from the catalogue: a C-backed fast path.

`safecity.readings` (pydantic) stays the documented schema and the only source of
rejections. `decode_telemetry` only ever *accepts*: it returns what `readings.parse`
would return for a valid reading, or None whenever it cannot be sure, and the caller
then runs `readings.parse`. So a refusal, and its reason code, always comes from the
pydantic models; `tests/safecity/test_fastcontract.py` checks on generated inputs that
every acceptance here is one `parse` makes, with the same values.

Where msgspec is laxer than the contract it is fenced before or after decoding:
duplicate keys (msgspec keeps the last; the contract refuses them) by counting keys,
and the timestamp by the contract's own `_to_utc`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Annotated, Any, Literal

import msgspec

from safecity import catalogue
from safecity.catalogue import Quantity
from safecity.lineprotocol import field_key
from safecity.readings import MAX_PAYLOAD_BYTES, MAX_SEQ, _to_utc, epoch_ms

FieldValue = float | int | bool | str
_SEQ = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
_BLANKS = (b" ", b"\t", b"\n", b"\r")


def _annotation(q: Quantity) -> Any:
    if q.type == "float":
        return Annotated[float, msgspec.Meta(ge=q.low, le=q.high)]
    if q.type == "int":
        return Annotated[int, msgspec.Meta(ge=q.low, le=q.high)]
    if q.type == "bool":
        return bool
    return Literal[q.choices]


@cache
def _decoder(
    kind: str,
) -> tuple[msgspec.json.Decoder[Any], tuple[str, ...], tuple[tuple[str, str, str], ...]] | None:
    """A strict decoder of `kind`'s readings, its quantity names and its field set's
    (name, `key=`, type) in line order; None for a kind this path does not cover
    (free text: its pattern is pydantic's alone)."""
    quantities = catalogue.telemetry_quantities(kind)
    if any(q.type == "enum" and not q.choices for q in quantities):
        return None
    if any(set('"\\\n\r\x00') & set("".join(q.choices)) for q in quantities):
        return None  # a choice that would need escaping in a line
    order = tuple(
        sorted(
            [("seq", field_key("seq"), "int")]
            + [(q.name, field_key(q.name), q.type) for q in quantities]
        )
    )
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
        gc=False,  # scalars only: no cycles, and nothing for the collector to walk
    )
    envelope = msgspec.defstruct(
        f"{kind}_reading",
        [("ts", str | int), ("seq", _SEQ), ("values", values)],
        forbid_unknown_fields=True,
        frozen=True,
        gc=False,  # scalars only: no cycles, and nothing for the collector to walk
    )
    return msgspec.json.Decoder(envelope, strict=True), tuple(q.name for q in quantities), order


def _field_set(order: tuple[tuple[str, str, str], ...], fields: dict[str, FieldValue]) -> str:
    """The line's field set, exactly as `lineprotocol.encode` writes these typed values (the
    decoder's bounds keep floats finite and ints within int64)."""
    parts = []
    for name, key, kind in order:
        value = fields.get(name)
        if value is None:
            continue
        if kind == "float":
            parts.append(key + repr(value))
        elif kind == "int":
            parts.append(f"{key}{value}i")
        elif kind == "bool":
            parts.append(key + ("true" if value else "false"))
        else:
            parts.append(f'{key}"{value}"')
    return ",".join(parts)


def decode_telemetry(
    kind: str, payload: bytes, now: datetime | None, past: timedelta, future: timedelta
) -> tuple[int, int, dict[str, FieldValue], str] | None:
    """(seq, ts in epoch ms, fields with seq, their line-protocol field set) of a reading
    `readings.parse` accepts, or None when this path cannot decide (the caller then asks
    `readings.parse`)."""
    if len(payload) > MAX_PAYLOAD_BYTES or b"\\" in payload:
        # An escape could spell a key twice without the key count below seeing it.
        return None
    for blank in _BLANKS:
        if blank in payload:  # compact JSON only: `"  :` would hide a key from the count
            return None
    spec = _decoder(kind)
    if spec is None:
        return None
    decoder, names, order = spec
    try:
        message = decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    values = message.values
    fields = {name: v for name in names if (v := getattr(values, name)) is not None}
    # Without escapes a `":` only ends a key: more keys than fields read means a key
    # was repeated (or an optional one sent as null; the slow path decides that too).
    if payload.count(b'":') != 3 + len(fields):
        return None
    try:
        ts = _to_utc(message.ts)
    except ValueError:
        return None
    current = now or datetime.now(UTC)
    if ts < current - past or ts > current + future:
        return None
    fields["seq"] = message.seq
    return message.seq, epoch_ms(ts), fields, _field_set(order, fields)
