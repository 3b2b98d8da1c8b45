"""Announce stage: the readings and statuses a worker wrote, on its city's `_stored` topic.

Once InfluxDB holds a write (`InfluxWriter.on_written`, a batch's or the spool drain's),
the worker publishes its readings and device statuses, the lines as written, on
safecity/v1/<city>/_stored/<worker> (QoS 1, each message within the broker's
max_packet_size: a bigger one would make the broker drop the connection). The API
keeps the overview's moving window from them (`safecity/board.py`): each line is announced
after InfluxDB holds it, so a reader that subscribes and then reads InfluxDB misses
none. Events and the worker's own points are not announced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator

from ingest import metrics
from ingest.writer import city_of, measurement_of
from safecity import catalogue, schema, topics

HEADROOM = 256
"""Bytes of a PUBLISH packet besides its topic and body (fixed header, packet id, properties)."""
log = logging.getLogger("safecity.ingest.announce")
ANNOUNCED = frozenset((*catalogue.KINDS, schema.DEVICE_STATUS))


class Announcer:
    """Publishes written lines per city (`publish(topic, body)`, never blocking)."""

    def __init__(
        self,
        publish: Callable[[str, bytes], None],
        cities: Collection[str],
        worker: str,
        max_packet: int,
    ) -> None:
        self._publish = publish
        self._topics = {city: topics.stored_topic(city, worker) for city in cities}
        longest = max((len(t) for t in self._topics.values()), default=0)
        self._max_body = max_packet - longest - HEADROOM

    def __call__(self, lines: list[str]) -> None:
        groups: dict[str, list[str]] = {}
        for line in lines:
            if measurement_of(line) in ANNOUNCED:
                city = city_of(line)
                if city in self._topics:
                    groups.setdefault(city, []).append(line)
        for city, group in groups.items():
            for body in bodies(group, self._max_body):
                self._publish(self._topics[city], body)
            metrics.ANNOUNCED.inc(len(group))


def bodies(lines: list[str], max_body: int) -> Iterator[bytes]:
    """The lines, newline-separated, in messages of at most `max_body` bytes. A line longer
    than that alone is left out, counted and logged (the contract's bounded fields keep a
    reading's line far shorter)."""
    chunk: list[bytes] = []
    size = 0
    for line in lines:
        raw = line.encode()
        if len(raw) > max_body:
            metrics.ANNOUNCE_SKIPPED.inc()
            log.warning("line too long to announce", extra={"bytes": len(raw)})
            continue
        if chunk and size + len(raw) + 1 > max_body:
            yield b"\n".join(chunk)
            chunk, size = [], 0
        chunk.append(raw)
        size += len(raw) + 1
    if chunk:
        yield b"\n".join(chunk)
