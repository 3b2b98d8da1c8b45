"""Keeps each served city's `Board` from the points the ingest announces.

One MQTT connection (clean session, QoS 1) subscribes to every served city's `_stored`
topic. On each connection, once the broker has confirmed the subscription, each board is
cleared and seeded from InfluxDB: every point written before that moment is in
InfluxDB, every point written after it is announced after its write (`ingest/announce.py`),
so together they are every point. Announcements that arrive while a seed runs are
applied at once (a point held twice overwrites itself). A board serves snapshots only
once its seed is in (`Board.covers`); until then, and after any reconnection until the
next seed, the overview reads InfluxDB as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from api import metrics
from api.lastseen import WHERE, span_params
from api.overview import MEAN_FIELDS, OVERVIEW_WINDOW, seen_and_status
from api.queries import CHUNK_ROWS
from api.settings import ApiSettings
from api.tenancy import CityRuntime
from safecity import catalogue, topics
from safecity.board import STREETLIGHT, Board
from safecity.errors import MqttError, TopicError
from safecity.influx import InfluxClient, Series, quote_ident
from safecity.lineprotocol import Point, decode
from safecity.mqtt import Incoming, MqttClient
from safecity.readings import epoch_ms
from safecity.registry import City
from safecity.schema import DEVICE_STATUS

log = logging.getLogger("safecity.api.board")
KEEP = timedelta(minutes=31)
"""How long a board keeps points: the streetlights' 30 minutes of states, and a minute."""
WINDOW = OVERVIEW_WINDOW + timedelta(minutes=1)
"""How far back a seed reads the mean fields: the overview's window, and a minute."""
AHEAD = timedelta(hours=1)
"""How far past the seed's moment the seed reads (readings of a device clock ahead)."""
PRUNE_EVERY_S = 30.0
RETRY_S = 5.0
BOARD_FIELDS = {**MEAN_FIELDS, STREETLIGHT: ("power_state", "status")}
AHEAD_ONLY = [k for k in catalogue.KINDS if k not in BOARD_FIELDS]
"""Kinds the board keeps only reading times of: a seed reads them only past its moment."""


@dataclass(frozen=True)
class Served:
    """A city's board and what seeds it."""

    city: City
    influx: InfluxClient
    board: Board


def new_board(city: City) -> Board:
    """An empty board for a city."""
    return Board(city.id, MEAN_FIELDS, int(KEEP.total_seconds() * 1000))


class BoardFeed:
    """The subscription that keeps the boards, and their seeds; start, then stop."""

    def __init__(self, settings: ApiSettings, served: Sequence[Served]) -> None:
        self.settings = settings
        self.served = list(served)
        self._boards = {s.city.id: s.board for s in self.served}
        self._client = MqttClient(settings.mqtt, f"safecity-api-board-{secrets.token_hex(4)}")
        self._task: asyncio.Task[None] | None = None
        self._seeding: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run in the background (the API answers from InfluxDB until a seed is in)."""
        self._task = asyncio.create_task(self._run(), name="board-feed")

    async def stop(self) -> None:
        """Cancel the feed and disconnect; idempotent."""
        for task in (self._seeding, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._seeding = self._task = None
        await self._client.disconnect()

    async def _run(self) -> None:
        while True:
            try:
                await self._client.connect()
                break
            except MqttError as exc:
                log.warning("board feed cannot connect", extra={"error": str(exc)})
                await asyncio.sleep(RETRY_S)
        while True:
            try:
                await self._follow()
            except Exception:  # a board that stopped following must not serve: cleared
                log.exception("board feed failed; seeding again")
                self._clear()
                await asyncio.sleep(RETRY_S)

    def _clear(self) -> None:
        for s in self.served:
            s.board.clear()
            metrics.BOARD_READY.labels(city=s.city.id).set(0)

    async def _follow(self) -> None:
        """Apply announcements; seed anew on every new connection, clear on a lost one."""
        seeded = -1  # the connection the boards were seeded on
        pruned = time.monotonic()
        while True:
            client = self._client
            if not client.connected.is_set():
                if seeded != -1:  # what is announced meanwhile never reaches this client
                    if self._seeding is not None:
                        self._seeding.cancel()
                    self._clear()
                    seeded = -1
            elif client.generation != seeded:
                seeded = await self._resubscribe(client.generation)
            batch = await client.inbox.get_batch(5000, 1.0)
            if batch:
                await asyncio.to_thread(self._apply, batch)
            if time.monotonic() - pruned > PRUNE_EVERY_S:
                pruned = time.monotonic()
                now_ms = int(time.time() * 1000)
                for s in self.served:
                    await asyncio.to_thread(s.board.prune, now_ms)

    async def _resubscribe(self, generation: int) -> int:
        """Clear the boards, subscribe on this connection, start their seed; the connection
        seeded, or -1 to try again."""
        if self._seeding is not None:
            self._seeding.cancel()
        self._clear()
        filters = [(topics.stored_filter(s.city.id), 1) for s in self.served]
        try:
            await self._client.subscribe(filters)
        except MqttError as exc:
            log.warning("board feed cannot subscribe", extra={"error": str(exc)})
            await asyncio.sleep(RETRY_S)
            return -1
        self._seeding = asyncio.create_task(self._seed_all(generation), name="board-seed")
        return generation

    async def _seed_all(self, generation: int) -> None:
        while True:
            try:
                for s in self.served:
                    at = datetime.now(UTC)
                    await seed(s, self.settings, at)
                    client = self._client
                    if client.generation != generation or not client.connected.is_set():
                        return  # announcements may have been missed: the feed seeds again
                    mark_seeded(s.board, at)
                    metrics.BOARD_READY.labels(city=s.city.id).set(1)
                    metrics.BOARD_SEEDS.labels(city=s.city.id).inc()
                return
            except Exception as exc:  # InfluxDB away, or worse: the board stays unserved
                log.warning("board seed failed; retrying", extra={"error": repr(exc)})
                await asyncio.sleep(RETRY_S)

    def _apply(self, batch: list[Incoming]) -> None:
        for message in batch:
            try:
                board = self._boards.get(topics.parse(message.topic).city)
                if board is not None:
                    lines = message.payload.decode().splitlines()
                    taken = board.apply([decode(line) for line in lines])
                    metrics.BOARD_POINTS.labels(city=board.city).inc(taken)
            except (ValueError, IndexError, TopicError) as exc:
                # Only an ingest worker may publish here; a message it did not write as
                # `announce` does is counted and logged, never fatal to the feed.
                metrics.BOARD_REFUSED.inc()
                log.warning(
                    "announcement refused", extra={"topic": message.topic, "error": repr(exc)}
                )


def mark_seeded(board: Board, at: datetime) -> None:
    """A board `seed`ed as of `at` is ready: it holds every mean point from `WINDOW` before."""
    board.ready(epoch_ms(at - WINDOW), epoch_ms(at))


def raw_statement(kind: str, fields: tuple[str, ...]) -> str:
    """Every point of a kind's `fields` in [$from, $to), its device id a column."""
    names = ", ".join(quote_ident(n) for n in (*fields, "device_id"))
    return f"SELECT {names} FROM {quote_ident(kind)} WHERE {WHERE}"  # noqa: S608 (allow-listed)


async def seed(served: Served, settings: ApiSettings, at: datetime) -> None:
    """Read into the board what InfluxDB holds that it must hold, as of `at`: the points of
    its mean fields since `WINDOW` before (the lights' since `KEEP`), each device's newest
    reading and deciding status in the lookback (`api.overview.seen_and_status`), and the
    readings and statuses dated after `at` (the caller marks it ready)."""
    city, influx, board = served.city, served.influx, served.board
    started = time.monotonic()
    lookback = at - timedelta(seconds=settings.status_lookback)
    (seen, status), answers = await asyncio.gather(
        seen_and_status(influx, settings, city, (lookback, at)), _raw(influx, city.id, at)
    )
    measurements = [*BOARD_FIELDS, *AHEAD_ONLY, DEVICE_STATUS]
    await asyncio.to_thread(_fill, board, city.id, zip(measurements, answers, strict=True))
    await asyncio.to_thread(board.seed_seen, seen, status)
    took = round(time.monotonic() - started, 2)
    metrics.BOARD_SEED_SECONDS.labels(city=city.id).set(took)
    log.info("board seeded", extra={"city": city.id, "devices": len(seen), "seconds": took})


async def _raw(influx: InfluxClient, city: str, at: datetime) -> list[list[Series]]:
    """The seed's raw statements, concurrently: the board's kinds (with their seq, so every
    reading's time is there) from where the board starts, the other kinds' readings and
    the statuses dated after `at`."""
    end = at + AHEAD
    return await asyncio.gather(
        *(
            influx.query(
                raw_statement(k, ("seq", *BOARD_FIELDS[k])),
                span_params(city, at - (KEEP if k == STREETLIGHT else WINDOW), end),
                chunk_rows=CHUNK_ROWS,
            )
            for k in BOARD_FIELDS
        ),
        *(influx.query(raw_statement(k, ("seq",)), span_params(city, at, end)) for k in AHEAD_ONLY),
        influx.query(raw_statement(DEVICE_STATUS, ("state",)), span_params(city, at, end)),
    )


def _fill(board: Board, city: str, answers: Iterable[tuple[str, list[Series]]]) -> None:
    """The seed's raw rows into the board, as the points they are."""
    points = []
    for measurement, series in answers:
        for s in series:
            for row in s.rows():
                device = row.pop("device_id", None)
                at = int(row.pop("time"))
                fields = {k: v for k, v in row.items() if v is not None}
                if device is not None and fields:
                    tags = {"city": city, "device_id": str(device)}
                    points.append(Point(measurement, tags, fields, at))
    board.apply(points)


def start_boards(settings: ApiSettings, runtimes: Iterable[CityRuntime]) -> BoardFeed | None:
    """Start the feed of the cities' boards, None when the board is off."""
    served = [Served(r.city, r.influx, r.board) for r in runtimes if r.board is not None]
    if not served:
        return None
    feed = BoardFeed(settings, served)
    feed.start()
    return feed


__all__ = [
    "BoardFeed",
    "Served",
    "mark_seeded",
    "new_board",
    "raw_statement",
    "seed",
    "start_boards",
]
