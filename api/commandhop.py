"""The caller an API replica vouches for on the command hop: signed, short-lived, used once.

A replica (`commands.url` set) admits the caller of a command route itself (an API key, a
provider's token, or a console session with its CSRF token: sessions live in the file of
the pod the person signed in on, which the owner may not share), then passes the request
to the owner with that caller in `X-Safecity-Caller` and a signature in
`X-Safecity-Caller-Signature`: HMAC-SHA256 under the key every API pod shares
(`command_hop_key_file`, a Kubernetes Secret) over the method, path, query, the body's
SHA-256, the signing time, a nonce and the caller. The owner believes the caller only
when the signature matches (compared in constant time), was made within `WINDOW_S` of its
own clock and not before it started, and its nonce was never seen; anything else is
refused with the reason. The header means nothing anywhere else: a process without a
verifier (every replica, an owner without the key) refuses a request that carries it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from api.apikeys import SCOPES, ApiKey
from api.people import Person
from api.settings import ApiSettings
from safecity import keyfile
from safecity.errors import ConfigError

__all__ = [
    "CALLER_HEADER",
    "SIGNATURE_HEADER",
    "WINDOW_S",
    "HopError",
    "HopVerifier",
    "decode_caller",
    "encode_caller",
    "open_hop",
    "vouch",
]

log = logging.getLogger("safecity.api")

CALLER_HEADER = "X-Safecity-Caller"
SIGNATURE_HEADER = "X-Safecity-Caller-Signature"
WINDOW_S = 30.0
"""How far a signature's time may be from the owner's clock (pods' clocks differ a little)."""
_CONTEXT = b"safecity-command-hop/1"
_WHAT = "command hop key"
_MAX_CALLER = 4096


@dataclass(frozen=True)
class HopError(Exception):
    """A vouched caller the owner does not believe: the HTTP status and the reason."""

    status: int
    reason: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode_caller(record: ApiKey) -> str:
    """The caller as the header carries it: base64url of its JSON (no key hash)."""
    data: dict[str, Any] = {
        "id": record.id,
        "name": record.name,
        "scopes": list(record.scopes),
        "cities": list(record.cities),
    }
    if isinstance(record, Person):
        data |= {"subject": record.subject, "display_name": record.display_name}
    return _b64(json.dumps(data, separators=(",", ":"), sort_keys=True).encode())


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise HopError(403, f"malformed {CALLER_HEADER}: {what} is not a list of strings")
    return tuple(value)


def decode_caller(text: str) -> ApiKey:
    """The caller of a header value (a `Person` when it names a subject); HopError(403)
    naming what is wrong with it."""
    try:
        if len(text) > _MAX_CALLER:
            raise ValueError("too long")
        data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except ValueError as exc:
        raise HopError(403, f"malformed {CALLER_HEADER}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("id", "name")):
        raise HopError(403, f"malformed {CALLER_HEADER}: no id and name")
    scopes = _strings(data.get("scopes"), "scopes")
    if not set(scopes) <= set(SCOPES):
        raise HopError(403, f"malformed {CALLER_HEADER}: unknown scopes {list(scopes)}")
    cities = _strings(data.get("cities"), "cities")
    base = ApiKey(id=data["id"], name=data["name"], scopes=scopes, sha256="", created_at="",
                  cities=cities)  # fmt: skip
    subject, name = data.get("subject"), data.get("display_name")
    if isinstance(subject, str) and isinstance(name, str):
        return Person(**asdict(base), subject=subject, display_name=name)
    return base


def _canonical(method: str, path: str, query: str, body: bytes) -> bytes:
    """What of a request the signature covers, as both ends see it (the query parsed and
    re-encoded in order: the hop's client may encode it another way)."""
    params = urlencode(sorted(parse_qsl(query, keep_blank_values=True)))
    return b"\n".join(
        [method.upper().encode(), path.encode(), params.encode(),
         hashlib.sha256(body).hexdigest().encode()]
    )  # fmt: skip


def _mac(key: bytes, request: bytes, stamp: str, nonce: str, caller: str) -> str:
    signed = b"\n".join([_CONTEXT, request, stamp.encode(), nonce.encode(), caller.encode()])
    return hmac.new(key, signed, hashlib.sha256).hexdigest()


def vouch(
    key: bytes, method: str, path: str, query: str, body: bytes, record: ApiKey,
    now: float | None = None,
) -> dict[str, str]:  # fmt: skip
    """The two headers that carry `record` to the owner with this request."""
    caller = encode_caller(record)
    stamp = f"{time.time() if now is None else now:.3f}"
    nonce = secrets.token_hex(16)
    mac = _mac(key, _canonical(method, path, query, body), stamp, nonce, caller)
    return {CALLER_HEADER: caller, SIGNATURE_HEADER: f"t={stamp},n={nonce},s={mac}"}


_MALFORMED = f"malformed {SIGNATURE_HEADER}: expected t=<time>,n=<nonce>,s=<mac>"


def _parts(signature: str) -> tuple[str, float, str, str]:
    fields = dict(p.partition("=")[::2] for p in signature.split(","))
    try:
        stamp, nonce, mac = fields["t"], fields["n"], fields["s"]
        when = float(stamp)
    except (KeyError, ValueError):
        raise HopError(403, _MALFORMED) from None
    if when != when or len(nonce) != 32 or len(mac) != 64:  # NaN, or not what vouch makes
        raise HopError(403, _MALFORMED)
    return stamp, when, nonce, mac


class HopVerifier:
    """The owner's check of vouched callers: signature, window, start, nonces seen (thread-safe)."""

    def __init__(self, key: bytes, window: float = WINDOW_S, started: float | None = None) -> None:
        self.key, self.window = key, window
        # A signature older than this process is refused: its nonces seen died with the last.
        self.started = time.time() if started is None else started
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def verify(
        self, method: str, path: str, query: str, body: bytes,
        caller: str, signature: str | None, now: float | None = None,
    ) -> ApiKey:  # fmt: skip
        """The caller the request's replica vouches for; HopError with the reason."""
        if not signature:
            raise HopError(401, f"{CALLER_HEADER} without {SIGNATURE_HEADER}")
        stamp, when, nonce, mac = _parts(signature)
        expected = _mac(self.key, _canonical(method, path, query, body), stamp, nonce, caller)
        if not hmac.compare_digest(expected, mac):
            raise HopError(
                403, f"{SIGNATURE_HEADER} does not match: not signed with this deployment's "
                "command hop key, or the request was altered on the way",
            )  # fmt: skip
        now = time.time() if now is None else now
        if abs(now - when) > self.window:
            raise HopError(
                403, f"{SIGNATURE_HEADER} signed {now - when:.1f} s ago: outside the "
                f"{self.window:g} s window",
            )  # fmt: skip
        if when < self.started - 1.0:
            raise HopError(403, f"{SIGNATURE_HEADER} signed before this process started")
        self._spend(nonce, when, now)
        return decode_caller(caller)

    def _spend(self, nonce: str, when: float, now: float) -> None:
        """Remember the nonce for as long as its signature is in the window; a second use
        is a replay."""
        with self._lock:
            if nonce in self._seen:
                raise HopError(403, f"{SIGNATURE_HEADER} already used: a replayed request")
            horizon = now - self.window
            for old in [n for n, t in self._seen.items() if t < horizon]:
                del self._seen[old]
            self._seen[nonce] = when


def open_hop(settings: ApiSettings) -> tuple[bytes | None, HopVerifier | None]:
    """A replica's signing key (it must exist: ConfigError naming the file), or the
    owner's verifier (its key made when missing; without one, vouched callers are refused
    and the reason logged)."""
    path = settings.command_hop_key_file
    if settings.commands.url is not None:
        return keyfile.read_key(path, _WHAT), None
    try:
        return None, HopVerifier(keyfile.ensure_key(path, _WHAT))
    except (ConfigError, OSError) as exc:
        log.warning("no command hop key: vouched callers will be refused: %s", exc)
        return None, None
