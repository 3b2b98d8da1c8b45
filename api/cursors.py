"""Opaque page cursors for newest-first lists (events, incidents): base64url of a position.

A cursor is the position of the last item of a page; the next page starts strictly
after it. A cursor this API did not hand out is a 422 naming the parameter.
"""

from __future__ import annotations

import base64
import binascii
import re

from api.errors import bad_param

_EVENT = re.compile(r"^e:([0-9]{1,16})$")
_INCIDENT = re.compile(r"^i:([0-9]{1,16}):(inc-[0-9a-f]{20})$")


def _encode(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode(cursor: str) -> str:
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        return raw.decode("ascii")
    except (binascii.Error, ValueError):
        raise bad_param("query", "cursor", "not a cursor returned by this API") from None


def event_cursor(ts_ms: int) -> str:
    """The cursor after events at or newer than `ts_ms` (the next page is older)."""
    return _encode(f"e:{ts_ms}")


def event_position(cursor: str) -> int:
    """The epoch ms a page of events must end before; 422 if not an event cursor."""
    match = _EVENT.fullmatch(_decode(cursor))
    if match is None:
        raise bad_param("query", "cursor", "not an events cursor returned by this API")
    return int(match.group(1))


def incident_cursor(opened_ms: int, incident_id: str) -> str:
    """The cursor after an incident in (opened_at, id) newest-first order."""
    return _encode(f"i:{opened_ms}:{incident_id}")


def incident_position(cursor: str) -> tuple[int, str]:
    """(opened_at ms, id) of the last incident of the previous page; 422 if not one."""
    match = _INCIDENT.fullmatch(_decode(cursor))
    if match is None:
        raise bad_param("query", "cursor", "not an incidents cursor returned by this API")
    return int(match.group(1)), match.group(2)
