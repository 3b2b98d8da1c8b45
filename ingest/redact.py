"""Redaction of personal fields (plates, faces, phone numbers) before a dead letter is kept.

An accepted ANPR event carries only `plate_hash` (sha256 of salt + plate, computed on
the camera); a refused message may hold anything, a plain `plate` included, and dead
letters are stored on disk and republished to every reader of `_deadletter/#`. So a
personal value is replaced by `redacted:` + the hex sha256 of a salt + the value: equal
values still compare equal (an operator can count one plate's rejections) but cannot be
read back. The salt is random per dead-letter directory (created once, mode 0600), so
the hashes are stable across restarts and workers sharing the directory.

A value that already is a 64-digit hex hash is left as it is: it is what the camera
sends, and keeping it keeps the dead letter byte-identical to what was published.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PERSONAL_KEY = re.compile(r"plate|face|phone|msisdn|imsi|imei|e_?mail", re.IGNORECASE)
"""Field names whose values are personal data wherever they appear in a payload."""
_HEX_HASH = re.compile(r"^[0-9a-fA-F]{64}$")
# A `"key": value` pair with a personal key in JSON-ish text that did not parse (cut off
# at 4 KiB, or broken on purpose): the value is a string (maybe unterminated) or a bare token.
_PAIR = re.compile(
    r'("(?:[^"\\]|\\.)*(?:plate|face|phone|msisdn|imsi|imei|e_?mail)(?:[^"\\]|\\.)*"\s*:\s*)'
    r'("(?:[^"\\]|\\.)*(?:"|$)|[^,}\]\s]+)',
    re.IGNORECASE,
)
SALT_NAME = "redaction.salt"


@dataclass(frozen=True, slots=True)
class Redacted:
    """A payload and detail with personal values replaced, and the keys that were."""

    payload: bytes
    detail: str
    keys: tuple[str, ...]


class Redactor:
    """Replaces personal values by salted hashes in payloads and rejection details."""

    def __init__(self, salt: bytes) -> None:
        self._salt = salt

    @classmethod
    def for_directory(cls, directory: Path) -> Redactor:
        """The redactor whose salt lives in `directory` (created on first use)."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / SALT_NAME
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            salt = path.read_bytes()
            if len(salt) >= 16:
                return cls(salt)
            # A torn write (crash right after creating it): replace it.
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC, 0o600)
        salt = secrets.token_bytes(32)
        try:
            os.write(fd, salt)
            os.fsync(fd)
        finally:
            os.close(fd)
        return cls(salt)

    def hash(self, value: str) -> str:
        """`redacted:` + hex sha256 of salt + value."""
        return "redacted:" + hashlib.sha256(self._salt + value.encode("utf-8")).hexdigest()

    def redact(self, payload: bytes, detail: str) -> Redacted:
        """The payload and detail without personal values (unchanged when there are none)."""
        found: dict[str, str] = {}  # plain value -> its hash
        keys: list[str] = []
        try:
            new_payload = self._tree(payload, found, keys)
        except (ValueError, RecursionError):
            # Not JSON, or JSON too deep to walk or with text (a lone surrogate) that cannot
            # be written back: the text path, which any bytes pass.
            found.clear()
            keys.clear()
            text = payload.decode("utf-8", "replace")
            new_text = _PAIR.sub(lambda m: self._pair(m, found, keys), text)
            new_payload = payload if new_text == text and not keys else new_text.encode()
        new_detail = _PAIR.sub(lambda m: self._pair(m, found, keys), detail)
        # Validation errors quote the offending input: replace every plain value we hashed.
        for plain, hashed in sorted(found.items(), key=lambda kv: -len(kv[0])):
            if len(plain) >= 4:  # a short value (a digit) would hit unrelated text
                new_detail = new_detail.replace(plain, hashed)
        return Redacted(new_payload, new_detail, tuple(dict.fromkeys(keys)))

    def _tree(self, payload: bytes, found: dict[str, str], keys: list[str]) -> bytes:
        """The payload with personal values hashed, walking its JSON tree; raises ValueError
        (UnicodeError included) or RecursionError when it cannot."""
        new_tree = self._walk(json.loads(payload), found, keys)
        if not keys:
            return payload
        return json.dumps(new_tree, separators=(",", ":"), ensure_ascii=False).encode()

    def _walk(self, node: Any, found: dict[str, str], keys: list[str]) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if PERSONAL_KEY.search(str(key)) and not _is_hash(value):
                    plain = value if isinstance(value, str) else json.dumps(value)
                    out[key] = found.setdefault(plain, self.hash(plain))
                    keys.append(str(key))
                else:
                    out[key] = self._walk(value, found, keys)
            return out
        if isinstance(node, list):
            return [self._walk(item, found, keys) for item in node]
        return node

    def _pair(self, match: re.Match[str], found: dict[str, str], keys: list[str]) -> str:
        raw = match.group(2)
        plain = raw[1:-1] if len(raw) >= 2 and raw.endswith('"') else raw.lstrip('"')
        if _is_hash(plain) or plain.startswith("redacted:"):
            return match.group(0)
        keys.append(match.group(1).split('"')[1])
        return f'{match.group(1)}"{found.setdefault(plain, self.hash(plain))}"'


def _is_hash(value: object) -> bool:
    return isinstance(value, str) and _HEX_HASH.match(value) is not None
