"""The audit log: one record for every call an `operate` or `admin` key makes to a route
that needs that scope — who (the key id; for a person signed in through the identity
provider also `subject` and `person`, the name), what (method, route template, target id,
outcome status), when.

Each record is appended as one JSON line to `settings.audit_log_file` (created 0600 in
a 0700 directory, opened O_APPEND and fsync'd: append-only, never rewritten) and logged
as a structured line (`safecity.api.audit`). `require(scope)` marks the request
(`mark`), the city lookup names the city the call was about (`note_city`);
`AuditMiddleware` writes the record once the status is known. Calls without
a recognised key are not audited (an anonymous flood must not fill the disk); they are
401s that never reach a route.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.apikeys import ApiKey
from api.people import Person
from safecity.readings import format_ts

log = logging.getLogger("safecity.api.audit")

AUDITED_SCOPES = frozenset({"operate", "admin"})
_STATE_KEY = "safecity_audit"
_CITY_KEY = "safecity_audit_city"
_CHUNK = 64 * 1024


def mark(scope: Scope, required: str, key: ApiKey) -> None:
    """Note on the request that `key` called a route needing `required` (if audited)."""
    if required in AUDITED_SCOPES:
        state = scope.setdefault("state", {})
        state[_STATE_KEY] = {
            "scope": required,
            "key_id": key.id,
            "key_name": key.name,
            # A person signed in through the identity provider: who, by the provider's word.
            "subject": key.subject if isinstance(key, Person) else None,
            "person": key.display_name if isinstance(key, Person) else None,
        }


def unmark(scope: Scope) -> None:
    """Take back the mark: another process serves the call and writes its record."""
    scope.get("state", {}).pop(_STATE_KEY, None)


def note_city(scope: Scope, city_id: str) -> None:
    """Note the city a request is about (its audit record names it)."""
    scope.setdefault("state", {})[_CITY_KEY] = city_id


class AuditLog:
    """The append-only JSON-lines file of audit records."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, record: dict[str, Any]) -> None:
        """Append one record durably (O_APPEND, fsync); the file is created 0600."""
        line = (json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n").encode()
        with self._lock:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)

    def newest(
        self,
        limit: int,
        key_id: str | None = None,
        cities: tuple[str, ...] = (),
    ) -> tuple[list[dict[str, Any]], bool]:
        """Up to `limit` records, newest first (optionally of one key, or only of some
        cities); and whether more exist."""
        out: list[dict[str, Any]] = []
        for line in self._lines_backwards():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn last line after a crash: skip it
            if not isinstance(record, dict):
                continue
            if key_id is not None and record.get("key_id") != key_id:
                continue
            if cities and record.get("city") not in cities:
                continue
            if len(out) == limit:
                return out, True
            out.append(record)
        return out, False

    def _lines_backwards(self) -> Iterator[bytes]:
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return
        with handle:
            handle.seek(0, os.SEEK_END)
            position = handle.tell()
            rest = b""
            while position > 0:
                step = min(_CHUNK, position)
                position -= step
                handle.seek(position)
                lines = (handle.read(step) + rest).split(b"\n")
                rest = lines[0]
                for line in reversed(lines[1:]):
                    if line.strip():
                        yield line
            if rest.strip():
                yield rest


def _target(scope: Scope) -> str | None:
    params = scope.get("path_params") or {}
    values = [str(v) for v in params.values()]
    return ",".join(values) if values else None


class AuditMiddleware:
    """Writes the audit record of each marked request once its outcome is known."""

    def __init__(self, app: ASGIApp, audit: AuditLog) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request; afterwards, audit it if `require` marked it."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        status = 500
        started = time.perf_counter()

        async def recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording)
        finally:
            marked = state.get(_STATE_KEY)
            if marked is not None:
                route = getattr(scope.get("route"), "path", None)
                client = scope.get("client")
                record = {
                    "ts": format_ts(datetime.now(UTC)),
                    "key_id": marked["key_id"],
                    "key_name": marked["key_name"],
                    "subject": marked["subject"],
                    "person": marked["person"],
                    "scope": marked["scope"],
                    "method": scope.get("method", ""),
                    "route": route if isinstance(route, str) else scope.get("path", ""),
                    "target": _target(scope),
                    "city": state.get(_CITY_KEY),
                    "status": status,
                    "client": client[0] if client else None,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                }
                try:
                    self.audit.append(record)
                except OSError as exc:
                    log.error("audit log not writable: %s", exc, extra={"audit": record})
                log.info("audit", extra={"audit": record})
