"""Shared settings pieces: the MQTT and InfluxDB connections, the base of every service's settings.

Each service builds its settings once at its entry point and passes them down;
nothing here is instantiated at import time.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from safecity import instance
from safecity.errors import ConfigError, RegistryError, TopicError
from safecity.registry import registry_paths
from safecity.secrets import read_secret_file, read_secrets
from safecity.topics import validate_identifier

Port = Annotated[int, Field(ge=1, le=65535)]


class MqttSettings(BaseModel):
    """How to reach the MQTT broker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="Broker host.")
    port: Port = Field(
        1883,
        description=("Broker port (the plain listener; the TLS one with SAFECITY_MQTT__TLS_CA)."),
    )
    username: str | None = Field(
        None,
        description=(
            "The service's own broker account (_ingest, _api, _alerts, _simulator); "
            "the broker has no anonymous access. `make run` sets it for each service "
            "it starts."
        ),
    )
    password: SecretStr | None = Field(None, description="That account's secret.")
    keepalive: Annotated[int, Field(ge=5, le=3600, description="MQTT keep-alive, seconds.")] = 30
    connect_timeout: Annotated[
        float, Field(gt=0, le=120, description="Seconds to wait for the broker's CONNACK.")
    ] = 10.0
    fast_path: bool = Field(
        True,
        description=(
            "The ingest's bulk-read receive path over paho's internals (checked at "
            "start-up; without them paho's stock per-message path is used, with a "
            "warning). false: always the stock path."
        ),
    )
    tls_ca: Path | None = Field(
        None,
        description=(
            "TLS to the broker's TLS listener: the CA that signed its certificate "
            "(`safecity certs init` writes one); empty = plain MQTT."
        ),
    )
    tls_cert: Path | None = Field(
        None, description="Mutual TLS: this client's certificate (CN = username)."
    )
    tls_key: Path | None = Field(None, description="Mutual TLS: this client's key.")
    # A secrets file as `safecity devices provision --secrets-file` writes it
    # ({username: secret}); the password is taken from it when not given directly, so
    # docker compose can hand services the secrets its provisioning step generated.
    secrets_file: Path | None = Field(
        None,
        description=(
            "A secrets file ({username: secret}, as `safecity devices provision "
            "--secrets-file` writes it): the password is taken from it when "
            "SAFECITY_MQTT__PASSWORD is not set."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _password_from_secrets_file(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("secrets_file") or data.get("password"):
            return data
        username = data.get("username")
        path = Path(data["secrets_file"])
        if not username:
            raise ValueError("secrets_file needs a username to look up")
        try:
            secrets = read_secrets(path)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        if username not in secrets:
            raise ValueError(f"no secret for {username!r} in {path}")
        return {**data, "password": secrets[username]}


CITY_PLACEHOLDER = "{city}"


class InfluxSettings(BaseModel):
    """How to reach InfluxDB through its v1-compatible HTTP API."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(
        "http://127.0.0.1:8086",
        description="InfluxDB's HTTP API (1.x, or 2.x/3.x through their v1 compatibility).",
    )
    database: str = Field(
        "safecity", description="Database (created at start-up by ingest and alerts)."
    )
    retention_policy: str = Field("raw", description="Default retention policy, for telemetry.")
    retention_duration: str = Field(
        "30d", description="Its duration, created or altered at start-up: INF or e.g. 30d, 12h, 4w."
    )
    # The other measurement families' retention policies (safecity.schema.RETENTION_FAMILIES),
    # created or altered at start-up next to the default one; never the default.
    events_retention_duration: str = Field(
        "365d", description="Duration of the `events` policy (safe-city events)."
    )
    security_retention_duration: str = Field(
        "90d", description="Duration of the `security` policy (security events)."
    )
    incidents_retention_duration: str = Field(
        "1825d",
        description=("Duration of the `incidents` policy (alerts and the incident lifecycle log)."),
    )
    rollup_tiers: str = Field(
        "1m:90d,1h:1825d,1d:INF",
        description=(
            "Rollup tiers, `<bucket>:<kept>` comma-separated (each in its policy "
            "`rollup_<bucket>`, created or altered at start-up); empty = no rollups."
        ),
    )
    username: str | None = Field(None, description="InfluxDB 1.x user.")
    password: SecretStr | None = Field(None, description="InfluxDB 1.x password.")
    token: SecretStr | None = Field(
        None, description="InfluxDB 2.x/3.x token (sent as `Authorization: Token ...`)."
    )
    # Secrets as files (Kubernetes Secrets, compose `secrets:`): read when the value
    # itself is not given, so no password has to sit in a container's environment.
    password_file: Path | None = Field(
        None,
        description=(
            "A file holding the InfluxDB password (a mounted secret), read when no password is set."
        ),
    )
    token_file: Path | None = Field(
        None,
        description=(
            "A file holding the InfluxDB token (a mounted secret), read when no token is set."
        ),
    )
    timeout: Annotated[float, Field(gt=0, le=300, description="Per-request timeout, seconds.")] = (
        10.0
    )
    gzip: bool = Field(True, description="Gzip write bodies.")

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for key in ("password", "token"):
            path = out.get(f"{key}_file")
            if path and not out.get(key):
                try:
                    out[key] = read_secret_file(Path(path), f"influx {key}_file")
                except ConfigError as exc:
                    raise ValueError(str(exc)) from exc
        return out

    @field_validator("database", "retention_policy")
    @classmethod
    def _identifier(cls, value: str) -> str:
        try:
            # A database name may be a template with one `{city}` (see database_for).
            validate_identifier(value.replace(CITY_PLACEHOLDER, "city"), "influx name")
            return value
        except TopicError as exc:
            # pydantic reports ValueError per field; our own error would escape unnamed.
            raise ValueError(str(exc)) from exc

    def database_for(self, city: str, cities: Collection[str]) -> str:
        """The database that holds `city`'s data, in a deployment serving `cities`.

        A `{city}` in `database` is replaced by the city; otherwise a single-city
        deployment keeps `database` as it is, and each city of several gets
        `<database>_<city>`: no city's data ever shares a database with another's.
        """
        validate_identifier(city, "city")
        if CITY_PLACEHOLDER in self.database:
            return self.database.replace(CITY_PLACEHOLDER, city)
        if len(cities) <= 1:
            return self.database
        return f"{self.database}_{city}"

    def for_city(self, city: str, cities: Collection[str]) -> InfluxSettings:
        """These settings aimed at `city`'s own database (`database_for`)."""
        return self.model_copy(update={"database": self.database_for(city, cities)})

    @field_validator("rollup_tiers")
    @classmethod
    def _tiers(cls, value: str) -> str:
        from safecity.rollups import parse_tiers

        parse_tiers(value)
        return value

    @field_validator(
        "retention_duration",
        "events_retention_duration",
        "security_retention_duration",
        "incidents_retention_duration",
    )
    @classmethod
    def _duration(cls, value: str) -> str:
        import re

        if not re.fullmatch(r"(INF|[1-9][0-9]*(h|d|w))", value):
            raise ValueError("retention_duration must be INF or like 30d, 12h, 4w")
        return value


class _RunningInstance(PydanticBaseSettingsSource):
    """Lowest-priority source: the broker and InfluxDB of the running local instance."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return instance.endpoints(set(self.settings_cls.model_fields))


def _text_settings(model: type[BaseModel], prefix: str) -> set[str]:
    """Lower-case variable names of the plain text fields (nested too): for those, and
    only those, an empty value is a value (an empty share group: a plain subscription)."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= _text_settings(annotation, f"{prefix}{name}__")
        elif annotation is str:
            names.add(f"{prefix}{name}".lower())
    return names


class ServiceSettings(BaseSettings):
    """Common base: env prefix SAFECITY_, nested delimiter __, optional .env file.

    An empty variable means "not set" (the default), so `.env.example` copied
    unchanged works: `SAFECITY_MQTT__TLS_CA=` must not become `Path(".")`. Plain text
    settings are the exception, since there the empty string is itself a value.

    Below every explicit setting, the broker and InfluxDB addresses come from the running
    local instance (`safecity run` in SAFECITY_HOME), so commands beside it need no flags.
    """

    model_config = SettingsConfigDict(
        env_prefix="SAFECITY_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    home: Path = Field(
        default_factory=instance.home,
        description="The instance directory: `safecity run` keeps its city there, every "
        "command finds it there, and every data path below defaults to a place in it.",
    )
    registry: Annotated[tuple[Path, ...], NoDecode] = Field(
        default=(),
        description="City registries (JSON lines): one file, several (comma-separated or a "
        "JSON list), or a directory (its *.jsonl, by name); default: built-in Tashkent",
    )
    log_level: str = Field(
        "INFO", description="Log level of the JSON log lines: DEBUG, INFO, WARNING, ERROR."
    )

    @field_validator("registry", mode="before")
    @classmethod
    def _registry_paths(cls, value: Any) -> Any:
        try:
            return registry_paths(value)
        except RegistryError as exc:
            raise ValueError(str(exc)) from exc

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The default sources, with empty values dropped from the environment and .env,
        then the running instance's endpoints."""
        # Dropped before the sources decode them: a list setting would fail on "" as JSON.
        keep = _text_settings(settings_cls, str(settings_cls.model_config.get("env_prefix", "")))
        for source in (env_settings, dotenv_settings):
            if isinstance(source, EnvSettingsSource):
                source.env_vars = {
                    k: v for k, v in source.env_vars.items() if v != "" or k.lower() in keep
                }
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            file_secret_settings,
            _RunningInstance(settings_cls),
        )


class StorageServiceSettings(ServiceSettings):
    """The base of a service that works on InfluxDB."""

    influx: InfluxSettings = InfluxSettings()


class BrokerServiceSettings(StorageServiceSettings):
    """The base of a service that works on the broker and InfluxDB."""

    mqtt: MqttSettings = MqttSettings()


# A service's /metrics, /healthz and /readyz: its own host and port settings, described
# alike (the host names the service; the port's text continues the host's).
MetricsPort = Annotated[int, Field(ge=0, le=65535, description="... and port.")]


def metrics_host_field(what: str) -> Any:
    """The field of a service's metrics host (127.0.0.1), `what` named in its description."""
    return Field("127.0.0.1", description=f"/metrics, /healthz and /readyz of {what}: host ...")


# Settings two services read (ingest and alerts; ingest and the API): the type, bounds and
# meaning of each once, here; each class gives the default (a test keeps them equal).
TsPastWindow = Annotated[
    float,
    Field(
        gt=0,
        description=(
            "Accepted device timestamps reach this many seconds into the past (widen for replays)."
        ),
    ),
]
TsFutureWindow = Annotated[
    float, Field(ge=0, description="... and this many seconds into the future.")
]
DeadletterDir = Annotated[
    Path, Field(description="Directory of the fsync'd dead-letter store (deadletters.jsonl).")
]


# The notifier's files, which the API uses too: each described once, here.
NotifyDir = Annotated[
    Path,
    Field(
        description="The notifier's directory: its outboxes (<city>.outbox.db), the local "
        "channel's log (console.jsonl)."
    ),
]
AckKeyFile = Annotated[
    Path, Field(description="The key that signs acknowledgement links (the notifier creates it).")
]
AckSpentFile = Annotated[
    Path, Field(description="The acknowledgement links already used (each acknowledges once).")
]


class InHome:
    """A default factory: the instance layout's `part` under the settings' own `home`
    (for a nested group, which has none, under SAFECITY_HOME)."""

    def __init__(self, part: str) -> None:
        self.part = part

    def __call__(self, data: dict[str, Any]) -> Any:
        return getattr(instance.layout(data.get("home")), self.part)


def in_home(part: str) -> InHome:
    """The default factory of a data path: `part` of the instance layout."""
    return InHome(part)


def instance_id_from_name(name: str) -> str:
    """An instance id from a container name: `safecity-ingest-2.safecity_default` (compose
    v2, as its DNS names a container) or `safecity_ingest_2` (compose v1) -> `safecity-ingest-2`."""
    import re

    label = name.split(".")[0].lower().replace("_", "-")
    label = re.sub(r"[^a-z0-9_.-]+", "-", label).strip("-.")
    return validate_identifier((label or "instance")[:64], "instance id")


def resolve_instance_id(value: str) -> str:
    """`auto` becomes a stable id from the container's name (docker compose `--scale`).

    Compose's DNS answers a container's own address with its replica name, which
    survives restarts of that replica: so each replica keeps its MQTT session and spool.
    Without container DNS (a plain host) it is the host name.
    """
    if value != "auto":
        return value
    import socket

    host = socket.gethostname()
    try:
        address = socket.gethostbyname(host)
        primary, aliases, _ = socket.gethostbyaddr(address)
    except OSError:
        return instance_id_from_name(host)
    if address.startswith("127."):
        return instance_id_from_name(host)  # no container network: a loopback names nothing
    # podman's /etc/hosts answers the address with the random host name first and the
    # container's compose name (project_service_N) as an alias: the alias is the stable one.
    names = [n for n in (primary, *aliases) if n.split(".")[0] not in (host, "localhost", "")]
    return instance_id_from_name(names[0] if names else primary)
