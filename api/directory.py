"""The device directory: the registry's devices in id order, for cursor pagination."""

from __future__ import annotations

import base64
import binascii
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass

from safecity.registry import City, Device
from safecity.topics import IDENTIFIER


class BadCursorError(ValueError):
    """A cursor that this API did not hand out."""


def encode_cursor(device_id: str) -> str:
    """The opaque cursor after `device_id`: unpadded base64url of the id."""
    return base64.urlsafe_b64encode(device_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The device id inside a cursor; BadCursorError if it is not one of ours."""
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        device_id = raw.decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        raise BadCursorError("not a cursor returned by this API") from exc
    if IDENTIFIER.fullmatch(device_id) is None:
        raise BadCursorError("not a cursor returned by this API")
    return device_id


@dataclass(frozen=True, slots=True)
class Page:
    """A page of devices and whether more follow."""

    items: list[Device]
    has_more: bool


class Directory:
    """The devices of a city sorted by id, so a cursor stays valid across pages."""

    def __init__(self, city: City) -> None:
        self.city = city
        self._devices = sorted(city.devices, key=lambda d: d.id)
        self._ids = [d.id for d in self._devices]

    def page(
        self,
        *,
        limit: int,
        after: str | None = None,
        kind: str | None = None,
        district: str | None = None,
        keep: Callable[[Device], bool] | None = None,
    ) -> Page:
        """Up to `limit` devices with id > `after` matching the filters, in id order."""
        start = 0 if after is None else bisect_right(self._ids, after)
        items: list[Device] = []
        for index in range(start, len(self._devices)):
            device = self._devices[index]
            if (
                (kind is None or device.kind == kind)
                and (district is None or device.district == district)
                and (keep is None or keep(device))
            ):
                if len(items) == limit:
                    return Page(items, has_more=True)
                items.append(device)
        return Page(items, has_more=False)
