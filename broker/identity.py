"""Device and service identities: secrets, a hashed credential store, the broker's accounts.

Secrets are generated here (shown once), only their PBKDF2 hashes are stored, and the
dynamic-security plugin's config is rendered from the store (broker.dynsec); a running
broker is changed account by account through its $CONTROL topic.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from safecity.errors import ConfigError
from safecity.registry import Cities, City, as_cities
from safecity.secrets import read_secrets
from safecity.topics import IDENTIFIER

from .dynsec import (
    DYNSEC_FILE,
    DynsecClient,
    device_commands,
    render_dynsec,
)

__all__ = [
    "LOCAL_SERVICES",
    "PBKDF2_ITERATIONS",
    "SERVICE_PREFIX",
    "Account",
    "CredentialStore",
    "LocalIdentities",
    "Role",
    "hash_password",
    "read_secrets",
    "reload_broker",
    "service_username",
    "validate_username",
    "verify_password",
]

# Mosquitto 2.0's own format (mosquitto_passwd -H sha512-pbkdf2):
# username:$7$<iterations>$<base64 12-byte salt>$<base64 64-byte PBKDF2-HMAC-SHA512>
_HASH_ID = 7
_SALT_BYTES = 12
_HASH_BYTES = 64
# mosquitto_passwd's own default. Secrets are 256-bit random tokens, so iterations add
# no brute-force resistance; they only cost broker CPU on every CONNECT (1,000 made the
# broker's password check most of its 2 ms per connect of an 18,000-device city).
PBKDF2_ITERATIONS = 101
_HASH_RE = re.compile(r"^\$7\$([0-9]+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$")

# Service usernames start with "_", which no device id can (see topics.IDENTIFIER), so a
# device can never be provisioned under a service's name and inherit its rights.
SERVICE_PREFIX = "_"
# The services' client ids (`safecity-ingest-0`, `safecity-alerts`, ...) start with this.
RESERVED_CLIENT_PREFIX = "safecity-"

STORE_NAME = "credentials.json"
SECRETS_FILE = "secrets.json"
# The `_admin` account's secret: kept beside the store, never in a secrets file handed
# to services (it can change every account on a running broker).
ADMIN_SECRET_FILE = "admin.json"  # noqa: S105 - a file name, not a password

_STORE_VERSION = 1


class Role(StrEnum):
    """What an account may do on the broker (its dynamic-security role)."""

    DEVICE = "device"
    INGEST = "ingest"
    ALERTS = "alerts"
    NOTIFY = "notify"
    API = "api"
    # The API's command service: publishes commands, reads their results.
    COMMAND = "command"
    CONSOLE = "console"
    SIMULATOR = "simulator"
    # Federation: publisher, regional ingest, a city's bridge (`_bridge.<city>` only).
    FEDERATION = "federation"
    REGION = "region"
    BRIDGE = "bridge"
    ADMIN = "admin"


SERVICE_ROLES: tuple[Role, ...] = tuple(
    r for r in Role if r not in (Role.DEVICE, Role.ADMIN, Role.BRIDGE)
)
DEFAULT_SERVICES: tuple[Role, ...] = (Role.INGEST, Role.API)
# What a local stack (`make run`, the test session) provisions besides the devices.
LOCAL_SERVICES: tuple[Role, ...] = (
    Role.INGEST,
    Role.API,
    Role.COMMAND,
    Role.ALERTS,
    Role.NOTIFY,
    Role.SIMULATOR,
)


def service_username(role: Role | str, city: str | None = None) -> str:
    """The broker username of a service account, e.g. `_ingest`; scoped to one city, e.g.
    `_ingest.tashkent` (its rights cover only `safecity/v1/tashkent/...`)."""
    r = Role(role)
    if r is Role.DEVICE:
        raise ConfigError("devices are named by their registry id, not by role")
    if city is None:
        if r is Role.BRIDGE:
            raise ConfigError("a bridge account belongs to one city: _bridge.<city>")
        return SERVICE_PREFIX + r.value
    if r is Role.ADMIN:
        raise ConfigError("the admin account changes every account: it has no city scope")
    if IDENTIFIER.fullmatch(city) is None:
        raise ConfigError(f"invalid city {city!r} for a scoped service account")
    return f"{SERVICE_PREFIX}{r.value}.{city}"


def service_scope(username: str) -> str | None:
    """The city a service account is scoped to (`_ingest.tashkent` -> tashkent), or None."""
    _, dot, city = username.partition(".")
    return city if dot else None


def validate_username(username: str, role: Role) -> str:
    """Return username if it is safe as an account, client id and topic level, else raise."""
    if role is Role.DEVICE:
        # The identifier pattern excludes + # / : and whitespace, so the name can never
        # widen into a wildcard or another topic level in the ACLs rendered from it.
        if IDENTIFIER.fullmatch(username) is None:
            raise ConfigError(
                f"invalid device username {username!r}: must match "
                f"^[a-z0-9][a-z0-9_.-]{{0,63}}$ (no '+', '#', '/', ':' or spaces)"
            )
        if username.startswith(RESERVED_CLIENT_PREFIX):
            # A device's client id is its username: it must never be a service's.
            raise ConfigError(
                f"invalid device username {username!r}: {RESERVED_CLIENT_PREFIX}* client ids "
                "belong to the platform's services"
            )
        return username
    scope = service_scope(username)
    scoped = scope is not None and IDENTIFIER.fullmatch(scope) is not None
    if scoped and role is not Role.ADMIN and username == service_username(role, scope):
        return username
    if username != service_username(role):
        raise ConfigError(
            f"service account of role {role} must be named {service_username(role)} "
            f"(or {service_username(role)}.<city> for one city)"
        )
    return username


def hash_password(
    secret: str, *, iterations: int = PBKDF2_ITERATIONS, salt: bytes | None = None
) -> str:
    """Hash a secret into Mosquitto 2.0's `$7$` PBKDF2-SHA512 format."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", secret.encode("utf-8"), salt, iterations, _HASH_BYTES)
    b64 = base64.b64encode
    return f"${_HASH_ID}${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(secret: str, encoded: str) -> bool:
    """Check a secret against a `$7$` hash (constant-time compare)."""
    match = _HASH_RE.match(encoded)
    if match is None:
        return False
    iterations = int(match.group(1))
    salt = base64.b64decode(match.group(2))
    expected = base64.b64decode(match.group(3))
    digest = hashlib.pbkdf2_hmac("sha512", secret.encode("utf-8"), salt, iterations, len(expected))
    return hmac.compare_digest(digest, expected)


def new_secret() -> str:
    """A fresh 256-bit URL-safe secret."""
    return secrets.token_urlsafe(32)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Account:
    """One broker account: username, role, password hash (None once revoked), timestamps."""

    username: str
    role: Role
    password_hash: str | None
    created: str
    updated: str
    revoked: str | None = None
    city: str | None = None
    """A device's city (from the registry); a scoped service account's city (its rights
    cover that city's topics only)."""

    @property
    def active(self) -> bool:
        """True while the account may log in."""
        return self.revoked is None and self.password_hash is not None


def _write_private(path: Path, text: str) -> None:
    """Write text atomically with mode 0600 (never readable by others, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class CredentialStore:
    """The JSON credential store (hashes only, mode 0600) and the broker files rendered from it."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STORE_NAME
        self.dynsec_file = self.directory / DYNSEC_FILE
        self.admin_secret_file = self.directory / ADMIN_SECRET_FILE
        self.accounts: dict[str, Account] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("version") != _STORE_VERSION:
                raise ConfigError(f"{self.path}: unsupported store version {data.get('version')}")
            for raw in data["accounts"]:
                account = Account(
                    username=raw["username"],
                    role=Role(raw["role"]),
                    password_hash=raw["password_hash"],
                    created=raw["created"],
                    updated=raw["updated"],
                    revoked=raw.get("revoked"),
                    city=raw.get("city"),
                )
                validate_username(account.username, account.role)
                self.accounts[account.username] = account
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"cannot read credential store {self.path}: {exc}") from exc

    def save(self) -> None:
        """Write the store and the broker's dynamic-security config (both 0600, atomically)."""
        records = []
        for account in sorted(self.accounts.values(), key=lambda a: a.username):
            record = asdict(account)
            record["role"] = account.role.value
            records.append(record)
        _write_private(
            self.path, json.dumps({"version": _STORE_VERSION, "accounts": records}, indent=1)
        )
        _write_private(self.dynsec_file, render_dynsec(self.dynsec_clients()))

    def dynsec_clients(self) -> list[DynsecClient]:
        """The active accounts as the dynamic-security plugin sees them."""
        return [
            DynsecClient(a.username, a.role.value, a.password_hash, a.city)
            for a in self.accounts.values()
            if a.active and a.password_hash is not None
        ]

    def commands(self, username: str, secret: str | None) -> list[dict[str, object]]:
        """$CONTROL commands putting one account (new `secret`, or None = gone) on a broker."""
        account = self._get(username)
        return device_commands(username, account.role.value, secret, account.city)

    def _set_secret(self, username: str, role: Role, city: str | None = None) -> str:
        validate_username(username, role)
        secret = new_secret()
        now = _now()
        old = self.accounts.get(username)
        if old is not None and old.role is not role:
            raise ConfigError(f"{username} exists with role {old.role}, not {role}")
        created = old.created if old is not None else now
        if old is not None and city is None:
            city = old.city
        self.accounts[username] = Account(
            username, role, hash_password(secret), created, now, city=city
        )
        return secret

    def provision(
        self, username: str, role: Role = Role.DEVICE, city: str | None = None
    ) -> str | None:
        """Create an account and return its secret; None if it exists (active or revoked).

        An existing device without a city gets `city` (stores written before cities).
        """
        validate_username(username, role)
        old = self.accounts.get(username)
        if old is not None:
            if old.city is None and city is not None and role is Role.DEVICE:
                self.accounts[username] = replace(old, city=city)
            return None
        if role is not Role.DEVICE:
            city = service_scope(username)
        return self._set_secret(username, role, city)

    def provision_city(
        self, city: City, services: Sequence[Role] = DEFAULT_SERVICES
    ) -> dict[str, str]:
        """Provision every registry device and the given services; return the new secrets."""
        issued: dict[str, str] = {}
        for device in city.devices:
            secret = self.provision(device.id, Role.DEVICE, city.id)
            if secret is not None:
                issued[device.id] = secret
        for role in services:
            name = service_username(role)
            secret = self.provision(name, role)
            if secret is not None:
                issued[name] = secret
        return issued

    def rotate(self, username: str) -> str:
        """Issue a new secret for an active account; a revoked one stays revoked."""
        account = self._get(username)
        if not account.active:
            raise ConfigError(
                f"{username!r} is revoked (since {account.revoked}): "
                "`safecity devices reinstate` it explicitly"
            )
        return self._set_secret(username, account.role)

    def reinstate(self, username: str) -> str:
        """Give a revoked account a new secret (its old one stays dead)."""
        account = self._get(username)
        if account.active:
            raise ConfigError(f"{username!r} is not revoked: rotate its secret instead")
        return self._set_secret(username, account.role)

    def ensure_admin(self) -> str:
        """The `_admin` secret (from its 0600 file), issuing one if missing or stale."""
        name = service_username(Role.ADMIN)
        known = read_secrets(self.admin_secret_file) if self.admin_secret_file.exists() else {}
        secret = known.get(name)
        account = self.accounts.get(name)
        if secret is None or account is None or not self.check(name, secret):
            if account is None:
                secret = self.provision(name, Role.ADMIN)
            elif account.active:
                secret = self.rotate(name)
            else:
                secret = self.reinstate(name)
            assert secret is not None
            _write_private(self.admin_secret_file, json.dumps({name: secret}))
        return secret

    def revoke(self, username: str) -> Account:
        """Revoke an account: its hash is deleted, so no secret can log in any more."""
        account = self._get(username)
        revoked = replace(account, password_hash=None, revoked=_now(), updated=_now())
        self.accounts[username] = revoked
        return revoked

    def _get(self, username: str) -> Account:
        try:
            return self.accounts[username]
        except KeyError:
            raise ConfigError(f"no account {username!r} (provision it first)") from None

    def check(self, username: str, secret: str) -> bool:
        """Whether this username/secret would log in (as the broker will check it)."""
        account = self.accounts.get(username)
        if account is None or not account.active or account.password_hash is None:
            return False
        return verify_password(secret, account.password_hash)

    def refresh(self, username: str, secret: str) -> None:
        """Re-hash a checked secret stored at another PBKDF2 iteration count (secret kept)."""
        account = self._get(username)
        match = _HASH_RE.match(account.password_hash or "")
        if match is not None and int(match.group(1)) != PBKDF2_ITERATIONS:
            self.accounts[username] = replace(account, password_hash=hash_password(secret))


def write_secrets(path: Path, issued: dict[str, str]) -> None:
    """Merge issued secrets into a 0600 JSON secrets file (for the local simulated fleet)."""
    existing: dict[str, str] = {}
    if path.exists():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read secrets file {path}: {exc}") from exc
    existing.update(issued)
    _write_private(path, json.dumps(existing, indent=1, sort_keys=True))


def drop_secrets(path: Path, usernames: Iterable[str]) -> None:
    """Remove revoked accounts from a secrets file, if there is one."""
    if not path.exists():
        return
    data: dict[str, str] = json.loads(path.read_text(encoding="utf-8"))
    for name in usernames:
        data.pop(name, None)
    _write_private(path, json.dumps(data, indent=1, sort_keys=True))


def read_pidfile(path: Path) -> int:
    """The pid in a pidfile (Mosquitto's `pid_file`)."""
    try:
        return int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read broker pid from {path}: {exc}") from exc


def reload_broker(pid: int) -> None:
    """SIGHUP Mosquitto: it re-reads its config and certificates (not the plugin's accounts)."""
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError as exc:
        raise ConfigError(f"no broker process with pid {pid}") from exc
    except PermissionError as exc:
        raise ConfigError(f"not allowed to signal broker pid {pid}: {exc}") from exc


class LocalIdentities:
    """The accounts of a local broker (`make run`, tests): store + 0600 file of every secret.

    Every registry device and each service in `services` gets an account; the secrets
    of all active accounts are kept in `secrets_file` (0600) so the local services and
    the simulated fleet can log in, across runs. A revoked account stays revoked. An
    active account whose secret is missing from the file, or no longer matches (rotated
    with the secret printed elsewhere), gets a new secret: the local fleet is its own
    device. Nothing here logs or prints a secret.
    """

    def __init__(
        self, directory: Path, city: City | Cities, services: Sequence[Role] = LOCAL_SERVICES
    ) -> None:
        self.directory = Path(directory)
        self.secrets_file = self.directory / SECRETS_FILE
        # Every city's devices get accounts, each pinned to its own city's acks.
        self.cities = as_cities(city)
        self.city = self.cities.first
        self.services = tuple(services)
        self.store = CredentialStore(self.directory)
        self.secrets: dict[str, str] = {}
        self.issued: dict[str, str] = {}
        """Secrets issued by the last `sync` (new accounts and repaired ones)."""
        self.admin_secret = ""
        """The `_admin` account's secret (kept in its own file, not in secrets_file)."""
        self.sync()

    def sync(self) -> dict[str, str]:
        """Provision what is missing, repair lost secrets, write store, broker config, secrets."""
        known = read_secrets(self.secrets_file)
        issued: dict[str, str] = {}
        for city in self.cities.values():
            issued.update(self.store.provision_city(city, self.services))
        self.admin_secret = self.store.ensure_admin()
        for name, account in self.store.accounts.items():
            if not account.active or name in issued or account.role is Role.ADMIN:
                continue
            secret = known.get(name)
            if secret is None or not self.store.check(name, secret):
                issued[name] = self.store.rotate(name)
            else:
                self.store.refresh(name, secret)
        self.store.save()
        self.secrets = {
            name: issued.get(name) or known[name]
            for name, account in sorted(self.store.accounts.items())
            if account.active and account.role is not Role.ADMIN
        }
        _write_private(self.secrets_file, json.dumps(self.secrets, indent=1, sort_keys=True))
        self.issued = issued
        return issued

    def add_devices(self, device_ids: Iterable[str], city: str | None = None) -> dict[str, str]:
        """Provision extra devices (not in the registry); return the new secrets."""
        issued: dict[str, str] = {}
        for device_id in device_ids:
            secret = self.store.provision(device_id, Role.DEVICE, city)
            if secret is not None:
                issued[device_id] = secret
        if issued:
            self.store.save()
            self.secrets.update(issued)
            write_secrets(self.secrets_file, issued)
        return issued

    def secret(self, username: str) -> str:
        """The secret of an active account (ConfigError if unknown or revoked)."""
        account = self.store.accounts.get(username)
        if account is None or not account.active or username not in self.secrets:
            raise ConfigError(f"no active account {username!r} on this broker")
        return self.secrets[username]
