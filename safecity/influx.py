"""InfluxDB through the v1-compatible HTTP API: `/write` (line protocol) and `/query` (InfluxQL).

The same endpoints are served natively by InfluxDB 1.x and in compatibility mode by
2.x (DBRP mapping, token auth) and 3.x, so this client works against all three.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from collections.abc import Awaitable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from safecity.errors import (
    QueryError,
    StorageAuthError,
    StorageUnavailableError,
    WriteRejectedError,
)
from safecity.schema import (
    DEVICE_OFFLINE,
    OFFLINE_BACKFILL,
    retention_policies,
    shard_durations,
)
from safecity.settings import InfluxSettings
from safecity.topics import IDENTIFIER

log = logging.getLogger("safecity.influx")

ParamValue = str | int | float | bool


@dataclass(frozen=True, slots=True)
class Series:
    """One result series: measurement name, group-by tags, columns and rows."""

    name: str
    tags: Mapping[str, str]
    columns: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]

    def rows(self) -> list[dict[str, Any]]:
        """The rows as dicts, with the group-by tags merged in."""
        return [{**self.tags, **dict(zip(self.columns, row, strict=True))} for row in self.values]


def quote_ident(name: str) -> str:
    """Quote an allow-listed identifier for InfluxQL; refuse anything else."""
    if IDENTIFIER.fullmatch(name) is None:
        raise QueryError(f"identifier {name!r} is not allow-listed")
    return f'"{name}"'


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("Retry-After")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


class InfluxClient:
    """Async InfluxDB v1-API client; owns one pooled httpx client."""

    def __init__(self, settings: InfluxSettings) -> None:
        self.settings = settings
        self._owns_pool = True
        headers = {"User-Agent": "safecity"}
        auth: tuple[str, str] | None = None
        if settings.token is not None:
            headers["Authorization"] = f"Token {settings.token.get_secret_value()}"
        elif settings.username is not None:
            password = settings.password.get_secret_value() if settings.password else ""
            auth = (settings.username, password)
        self._http = httpx.AsyncClient(
            base_url=settings.url.rstrip("/"),
            headers=headers,
            auth=auth,
            timeout=settings.timeout,
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=8),
        )

    def for_database(self, database: str) -> InfluxClient:
        """A client of another database on the same server, sharing this one's connection
        pool (each city's own database); closing it leaves the pool to this client."""
        quote_ident(database)
        view = InfluxClient.__new__(InfluxClient)
        view.settings = self.settings.model_copy(update={"database": database})
        view._owns_pool = False
        view._http = self._http
        return view

    def for_city(self, city: str, cities: Collection[str]) -> InfluxClient:
        """A client of `city`'s own database (`InfluxSettings.database_for`), same pool."""
        database = self.settings.database_for(city, cities)
        return self if database == self.settings.database else self.for_database(database)

    async def close(self) -> None:
        """Close the connection pool (unless it is another client's); idempotent."""
        if self._owns_pool:
            await self._http.aclose()

    async def ping(self) -> bool:
        """True when InfluxDB answers /ping."""
        try:
            response = await self._http.get("/ping")
        except httpx.HTTPError:
            return False
        return response.status_code == 204

    async def ensure_database(self) -> None:
        """Create the database and its retention policies (and give offline statuses stored
        before their twin existed their twin); safe to repeat.

        A non-admin account (least privilege, as docker compose runs the services) may
        not create them: then they must already exist, made by `safecity influx init`
        with an admin account, else StorageAuthError says so.
        """
        try:
            await self._create_database()
        except StorageAuthError as exc:
            if "requires admin privilege" not in str(exc):
                raise
            missing = await self.missing_retention_policies()
            if missing:
                raise StorageAuthError(
                    f"InfluxDB user {self.settings.username!r} may not create database "
                    f"{self.settings.database!r} or its retention policies, and these are "
                    f"missing: {', '.join(missing)}; run `safecity influx init` with an "
                    "admin account first"
                ) from exc
            log.info(
                "influxdb prepared by an admin; this account only writes and reads",
                extra={"database": self.settings.database},
            )
        await self._twin_old_offline_statuses()

    async def _twin_old_offline_statuses(self) -> None:
        """A database written before `device_offline` existed gets the twin of every
        stored offline status, once (the API's device states read the twins)."""
        db = quote_ident(self.settings.database)
        twin = quote_ident(DEVICE_OFFLINE)
        shown = await self.query(f"SHOW MEASUREMENTS ON {db} WITH MEASUREMENT = {twin}")
        if any(series.values for series in shown):
            return
        await self.query(OFFLINE_BACKFILL)

    async def missing_retention_policies(self) -> list[str]:
        """The retention policies this platform needs that the database lacks."""
        db = quote_ident(self.settings.database)
        wanted = [
            self.settings.retention_policy,
            *(n for n, _ in retention_policies(self.settings)),
        ]
        try:
            series = await self.query(f"SHOW RETENTION POLICIES ON {db}")
        except QueryError as exc:
            if "database not found" in str(exc):
                return wanted
            raise
        present = {row["name"]: row for s in series for row in s.rows()}
        missing = [name for name in wanted if name not in present]
        default = present.get(self.settings.retention_policy)
        if default is not None and not default.get("default"):
            missing.append(f"{self.settings.retention_policy} (as the default)")
        return missing

    async def _create_database(self) -> None:
        db = quote_ident(self.settings.database)
        rp = quote_ident(self.settings.retention_policy)
        duration = self.settings.retention_duration
        await self.execute(f"CREATE DATABASE {db}")
        try:
            await self.execute(
                f"CREATE RETENTION POLICY {rp} ON {db} DURATION {duration} REPLICATION 1 DEFAULT"
            )
        except QueryError as exc:
            if "already exists" not in str(exc):
                raise
            await self.execute(
                f"ALTER RETENTION POLICY {rp} ON {db} DURATION {duration} REPLICATION 1 DEFAULT"
            )
        await self.ensure_retention_policies()

    async def ensure_retention_policies(self) -> None:
        """Create (or alter to the configured duration) every measurement family's own
        retention policy (`safecity.schema.RETENTION_FAMILIES`); never the default; safe
        to repeat. The database must exist (QueryError `database not found` otherwise)."""
        db = quote_ident(self.settings.database)
        shards = shard_durations(self.settings)
        for name, duration in retention_policies(self.settings):
            rp = quote_ident(name)
            shard = f" SHARD DURATION {shards[name]}" if name in shards else ""
            try:
                await self.execute(
                    f"CREATE RETENTION POLICY {rp} ON {db} DURATION {duration} REPLICATION 1"
                    + shard
                )
            except QueryError as exc:
                if "already exists" not in str(exc):
                    raise
                await self.execute(
                    f"ALTER RETENTION POLICY {rp} ON {db} DURATION {duration} REPLICATION 1" + shard
                )

    async def write(self, body: bytes, *, precision: str = "ms", rp: str | None = None) -> None:
        """Write a line-protocol batch into retention policy `rp` (None = the default one,
        `settings.retention_policy`); raise a StorageError subclass saying what to do next.

        One request has one policy: a batch mixing families must be split by
        `safecity.schema.retention_policy_of(measurement)` first."""
        params = {
            "db": self.settings.database,
            "rp": rp if rp is not None else self.settings.retention_policy,
            "precision": precision,
        }
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        content = body
        if self.settings.gzip:
            content = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        try:
            response = await self._http.post(
                "/write", params=params, content=content, headers=headers
            )
        except httpx.TimeoutException as exc:
            raise StorageUnavailableError(f"InfluxDB write timed out: {exc!r}") from exc
        except httpx.TransportError as exc:
            raise StorageUnavailableError(f"InfluxDB unreachable: {exc!r}") from exc
        status = response.status_code
        if status == 204:
            return
        message = _error_text(response)
        if status in (400, 413):
            raise WriteRejectedError(status, message)
        if status in (401, 403, 404):
            raise StorageAuthError(f"InfluxDB {status}: {message}")
        if status == 429 or status >= 500:
            raise StorageUnavailableError(f"InfluxDB {status}: {message}", _retry_after(response))
        raise StorageUnavailableError(f"InfluxDB unexpected {status}: {message}")

    async def execute(self, statement: str) -> None:
        """Run a management statement (CREATE, ALTER, DROP)."""
        await self.query(statement)

    async def query(
        self,
        statement: str,
        params: Mapping[str, ParamValue] | None = None,
        *,
        chunk_rows: int | None = None,
    ) -> list[Series]:
        """Run one InfluxQL SELECT/SHOW with bound parameters; return its series (ms epoch).

        With `chunk_rows`, InfluxDB streams the answer in chunks of that many rows and each
        chunk is parsed on its own, the event loop free between them: a large answer (a
        city's thousands of devices) never holds the loop for its whole parse. The series
        returned are the same (a series' chunks are joined again).
        """
        data: dict[str, str] = {"q": statement, "db": self.settings.database}
        if params:
            data["params"] = json.dumps(dict(params))
        if chunk_rows is None:
            response = await self._send(self._http.post("/query", data=data, params=EPOCH))
            _check_status(response)
            return _series_of(_json_of(response.content, response.status_code))
        chunked = {**EPOCH, "chunked": "true", "chunk_size": str(chunk_rows)}
        request = self._http.build_request("POST", "/query", data=data, params=chunked)
        response = await self._send(self._http.send(request, stream=True))
        try:
            if response.status_code >= 300:
                await response.aread()
                _check_status(response)
            return await self._chunks(response)
        finally:
            await response.aclose()

    async def _chunks(self, response: httpx.Response) -> list[Series]:
        """The series of a chunked answer (one JSON document a line), a pause after each."""
        joined: dict[tuple[str, tuple[tuple[str, str], ...]], list[Series]] = {}
        try:
            async for line in response.aiter_lines():
                if line.strip():
                    for s in _series_of(_json_of(line.encode(), response.status_code)):
                        joined.setdefault((s.name, tuple(sorted(s.tags.items()))), []).append(s)
                await asyncio.sleep(0)
        except httpx.TimeoutException as exc:
            raise StorageUnavailableError(f"InfluxDB query timed out: {exc!r}") from exc
        except httpx.TransportError as exc:
            raise StorageUnavailableError(f"InfluxDB unreachable: {exc!r}") from exc
        return [_join(parts) for parts in joined.values()]

    async def _send(self, sending: Awaitable[httpx.Response]) -> httpx.Response:
        try:
            return await sending
        except httpx.TimeoutException as exc:
            raise StorageUnavailableError(f"InfluxDB query timed out: {exc!r}") from exc
        except httpx.TransportError as exc:
            raise StorageUnavailableError(f"InfluxDB unreachable: {exc!r}") from exc


EPOCH = {"epoch": "ms"}


def _check_status(response: httpx.Response) -> None:
    if response.status_code in (401, 403):
        raise StorageAuthError(f"InfluxDB {response.status_code}: {_error_text(response)}")
    if response.status_code >= 500:
        raise StorageUnavailableError(f"InfluxDB {response.status_code}: {_error_text(response)}")


def _json_of(body: bytes, status: int) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise QueryError(f"InfluxDB answered {status} without JSON") from exc


def _series_of(payload: Any) -> list[Series]:
    """The series of one `/query` answer (or chunk of one); its error raised."""
    if "error" in payload:
        raise QueryError(str(payload["error"]))
    out: list[Series] = []
    for result in payload.get("results", []):
        if "error" in result:
            raise QueryError(str(result["error"]))
        for s in result.get("series", []):
            out.append(
                Series(
                    name=s.get("name", ""),
                    tags=s.get("tags") or {},
                    columns=tuple(s.get("columns", ())),
                    values=tuple(tuple(v) for v in s.get("values", ())),
                )
            )
    return out


def _join(parts: list[Series]) -> Series:
    """One series from its chunks, in order."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    values = tuple(row for p in parts for row in p.values)
    return Series(name=first.name, tags=first.tags, columns=first.columns, values=values)


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and "error" in body:
            return str(body["error"])[:500]
    except ValueError:
        pass
    return response.text[:500]
