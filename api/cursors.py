"""Opaque page cursors for newest-first lists (events, incidents): base64url of a position.

A cursor is the position of the last item of a page; the next page starts strictly
after it. A cursor outside the published pattern is a 422; a well-formed one this
API did not hand out names no page: 404.
"""

from __future__ import annotations

import base64
import binascii
import re

from fastapi import HTTPException

from api.errors import bad_param

_EVENT = re.compile(r"^e:([0-9]{1,16})$")
_INCIDENT = re.compile(r"^i:([0-9]{1,16}):(inc-[0-9a-f]{20})$")


def _encode(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


PATTERN = r"^[A-Za-z0-9_-]{1,96}$"


def _unknown(what: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"unknown cursor: not {what} returned by this API")


def _decode(cursor: str, what: str) -> str:
    if re.fullmatch(PATTERN, cursor) is None:
        raise bad_param("query", "cursor", "must be a `next_cursor` of this API (base64url)")
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        return raw.decode("ascii")
    except (binascii.Error, ValueError):
        raise _unknown(what) from None


def event_cursor(ts_ms: int) -> str:
    """The cursor after events at or newer than `ts_ms` (the next page is older)."""
    return _encode(f"e:{ts_ms}")


def event_position(cursor: str) -> int:
    """The epoch ms a page of events must end before; 422 if not an event cursor."""
    match = _EVENT.fullmatch(_decode(cursor, "an events cursor"))
    if match is None:
        raise _unknown("an events cursor")
    return int(match.group(1))


def incident_cursor(opened_ms: int, incident_id: str) -> str:
    """The cursor after an incident in (opened_at, id) newest-first order."""
    return _encode(f"i:{opened_ms}:{incident_id}")


def incident_position(cursor: str) -> tuple[int, str]:
    """(opened_at ms, id) of the last incident of the previous page; 422 if not one."""
    match = _INCIDENT.fullmatch(_decode(cursor, "an incidents cursor"))
    if match is None:
        raise _unknown("an incidents cursor")
    return int(match.group(1)), match.group(2)


_COMMAND = re.compile(r"^c:([0-9]{1,16})$")


def command_cursor(seq: int) -> str:
    """The cursor after a command (by its store sequence; the next page is older)."""
    return _encode(f"c:{seq}")


def command_position(cursor: str) -> int:
    """The store sequence a page of commands must end before; 404 if not a commands cursor."""
    match = _COMMAND.fullmatch(_decode(cursor, "a commands cursor"))
    if match is None:
        raise _unknown("a commands cursor")
    return int(match.group(1))
