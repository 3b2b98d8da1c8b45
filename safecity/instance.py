"""The local instance: the one directory `safecity run` keeps a city in, found by every command.

`SAFECITY_HOME` (environment or `.env`) names it; the default is `var/stack` under the
working directory. Its layout is defined here once, and the settings defaults of every
service derive from it, so `safecity apikey`, `devices`, `deadletter`, `verify` and the
services themselves agree with a running `safecity run` without flags. While it runs,
`safecity run` records its pid, endpoints (random ports included) and cities in the
state file; commands take the broker and InfluxDB addresses and the cities' registries
from there when no setting names them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from safecity.errors import ConfigError

HOME_VARIABLE = "SAFECITY_HOME"
DEFAULT_HOME = Path("var/stack")
STATE_FILE = "instance.json"


def _from_dotenv(name: str, path: Path = Path(".env")) -> str | None:
    """The value of `name` in a .env file (the same file the settings read), if any."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.strip().removeprefix("export ").partition("=")
        if sep and key.strip() == name:
            return value.strip().strip("'\"")
    return None


def home() -> Path:
    """The instance directory: $SAFECITY_HOME, else SAFECITY_HOME in .env, else var/stack."""
    value = os.environ.get(HOME_VARIABLE)
    if value is None:
        value = _from_dotenv(HOME_VARIABLE)
    return Path(value) if value else DEFAULT_HOME


@dataclass(frozen=True, slots=True)
class Layout:
    """Where an instance keeps each part (all below `root`)."""

    root: Path

    @property
    def identity_dir(self) -> Path:
        """Broker accounts (hashes only), rendered passwd/ACL, the 0600 secrets file."""
        return self.root / "identity"

    @property
    def secrets_file(self) -> Path:
        """The secret of every active local account (0600), for the local fleet."""
        return self.identity_dir / "secrets.json"

    @property
    def certs_dir(self) -> Path:
        """The local CA and the broker's TLS certificate."""
        return self.root / "certs"

    @property
    def broker_pidfile(self) -> Path:
        """The local Mosquitto's pid_file (SIGHUP after account changes)."""
        return self.root / "mosquitto" / "mosquitto.pid"

    @property
    def deadletter_dir(self) -> Path:
        """The ingest's dead-letter store."""
        return self.root / "deadletter"

    @property
    def spool_dir(self) -> Path:
        """The ingest's disk spool (one subdirectory per worker)."""
        return self.root / "spool"

    @property
    def edge_spool_dir(self) -> Path:
        """The simulated devices' outboxes."""
        return self.root / "edge-spool"

    @property
    def api_keys_file(self) -> Path:
        """The API key store (hashes only)."""
        return self.root / "apikeys.json"

    @property
    def audit_log_file(self) -> Path:
        """The API's audit log of operate/admin calls."""
        return self.root / "audit" / "api-audit.jsonl"

    @property
    def commands_file(self) -> Path:
        """The API's durable command store (every command and each device's status)."""
        return self.root / "commands" / "commands.sqlite3"

    @property
    def sessions_file(self) -> Path:
        """The API's console sessions (hashed ids) and pending sign-ins."""
        return self.root / "sessions" / "sessions.sqlite3"

    @property
    def steps_outbox_file(self) -> Path:
        """The API's outbox of incident steps to announce on the broker."""
        return self.root / "api" / "steps.outbox.sqlite3"

    @property
    def ledger_file(self) -> Path:
        """What the instance's simulator sent (ground truth for `safecity verify`)."""
        return self.root / "ledger.jsonl"

    @property
    def cities_dir(self) -> Path:
        """The built-in registries of the cities `safecity run --cities` runs."""
        return self.root / "cities"

    @property
    def cities_file(self) -> Path:
        """The cities of the instance's last run, kept after it stops (for `verify`)."""
        return self.root / "cities.json"

    @property
    def databases_file(self) -> Path:
        """Which city's data each database of the instance's InfluxDB holds."""
        return self.root / "databases.json"

    @property
    def notify_dir(self) -> Path:
        """The notifier's outbox (`outbox.db`) and its local channel's log."""
        return self.root / "notify"

    @property
    def ack_key_file(self) -> Path:
        """The key that signs acknowledgement links (0600; the notifier signs, the API checks)."""
        return self.identity_dir / "ack-links.key"

    @property
    def command_hop_key_file(self) -> Path:
        """The key the API replicas sign the callers they pass to the command service with."""
        return self.identity_dir / "command-hop.key"

    @property
    def ack_spent_file(self) -> Path:
        """The acknowledgement links already used (each acknowledges once)."""
        return self.notify_dir / "ack-spent.db"

    @property
    def state_file(self) -> Path:
        """The running launcher's pid and endpoints (absent when it is not running)."""
        return self.root / STATE_FILE


def layout(root: Path | None = None) -> Layout:
    """The layout of `root`, by default of the instance directory (`home()`)."""
    return Layout(home() if root is None else Path(root))


@dataclass(frozen=True, slots=True)
class Running:
    """What a running `safecity run` recorded about itself."""

    pid: int
    mqtt_host: str
    mqtt_port: int
    influx_url: str
    api_url: str
    mqtt_tls_port: int | None = None
    registry: str | None = None
    speed: float = 1.0
    cities: tuple[str, ...] = ()
    """The cities the instance runs (each with its own database and fleet)."""

    def to_json(self) -> str:
        """The state file's content."""
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Running:
        """Parse a state file (ConfigError when it is not one)."""
        try:
            data: dict[str, Any] = json.loads(text)
            if isinstance(data.get("cities"), list):
                data["cities"] = tuple(data["cities"])
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"not an instance state file: {exc}") from exc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running(where: Layout | None = None) -> Running | None:
    """The running launcher of the instance, or None (no state file, or its process is gone)."""
    path = (where or layout()).state_file
    try:
        state = Running.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ConfigError):
        return None
    return state if _alive(state.pid) else None


def record(where: Layout, state: Running) -> None:
    """Write the state file (atomically: readers never see half of it)."""
    where.root.mkdir(parents=True, exist_ok=True)
    tmp = where.state_file.with_suffix(".tmp")
    tmp.write_text(state.to_json(), encoding="utf-8")
    tmp.replace(where.state_file)


def record_cities(where: Layout, cities: Sequence[str]) -> None:
    """Keep the cities a run serves (atomically), for commands after it stopped."""
    where.root.mkdir(parents=True, exist_ok=True)
    tmp = where.cities_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"cities": list(cities)}) + "\n", encoding="utf-8")
    tmp.replace(where.cities_file)


def recorded_cities(where: Layout) -> tuple[str, ...]:
    """The cities of the instance's last run (empty when none was recorded)."""
    try:
        data = json.loads(where.cities_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ()
    cities = data.get("cities") if isinstance(data, dict) else None
    return tuple(str(c) for c in cities) if isinstance(cities, list) else ()


def claim_databases(where: Layout, databases: dict[str, str]) -> None:
    """Record which city each database {name: city} holds; ConfigError when one of them
    already holds another city's data (one database never mixes two cities)."""
    try:
        known = json.loads(where.databases_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    clashes = [
        f"database {name!r} holds {known[name]}'s data, not {city}'s"
        for name, city in sorted(databases.items())
        if known.get(name, city) != city
    ]
    if clashes:
        raise ConfigError(
            f"{'; '.join(clashes)} (instance {where.root}). Run each city in its own "
            "SAFECITY_HOME, or both together (`--cities A B`: a database per city)"
        )
    where.root.mkdir(parents=True, exist_ok=True)
    tmp = where.databases_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({**known, **databases}, indent=1, sort_keys=True) + "\n")
    tmp.replace(where.databases_file)


def forget(where: Layout, pid: int) -> None:
    """Remove the state file if it is still the one `pid` wrote."""
    try:
        state = Running.from_json(where.state_file.read_text(encoding="utf-8"))
    except (OSError, ConfigError):
        return
    if state.pid == pid:
        where.state_file.unlink(missing_ok=True)


def endpoints(fields: set[str]) -> dict[str, Any]:
    """Settings values for the running instance's broker, InfluxDB and cities ({} when none
    runs): so `apikey create --city`, `certs provision` and the rest beside a several-city
    run know its cities. Only for the fields a settings class has (`mqtt`, `influx`,
    `registry`); explicit settings win.
    """
    state = running()
    if state is None:
        return {}
    out: dict[str, Any] = {}
    if "registry" in fields and state.registry:
        out["registry"] = state.registry
    if "mqtt" in fields:
        out["mqtt"] = {"host": state.mqtt_host, "port": state.mqtt_port}
    if "influx" in fields:
        out["influx"] = {"url": state.influx_url}
    return out
