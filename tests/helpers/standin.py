"""A stand-in HTTP server for tests: a real server on a free loopback port, in a thread,
answering every request with what the test's function makes of it (a JSON body).

The stand-in Kubernetes API (tests/control/test_volumesnapshots.py), Grafana
(tests/dashboards/test_push.py) and the notifier's receivers (tests/helpers/receivers.py)
are each a function from `Request` to `(status, JSON body)` served by one `StandIn`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Request:
    """One request as the stand-in received it."""

    method: str
    target: str
    """The path with its query, as sent."""
    headers: Message
    """Case-insensitive: `headers.get("authorization")`."""
    body: bytes

    @property
    def path(self) -> str:
        """The path without the query."""
        return urlsplit(self.target).path

    @property
    def query(self) -> str:
        """The query string."""
        return urlsplit(self.target).query

    def json(self) -> Any:
        """The body as JSON (None when empty)."""
        return json.loads(self.body or b"null")


Answer = Callable[[Request], tuple[int, Any]]


def _handler(answer: Answer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, reply = answer(Request(self.command, self.path, self.headers, body))
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _serve  # noqa: N815

        def log_message(self, *args: Any) -> None:
            """Quiet."""

    return Handler


class StandIn:
    """A server answering with `answer` until `close()` (or the end of a `with`)."""

    def __init__(self, answer: Answer) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(answer))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        """The base URL."""
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        """Stop serving and free the port."""
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> StandIn:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
