"""Settings of the API service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from safecity.federation import RegionSettings
from safecity.roles import ROLE_SCOPES, ROLES_CLAIM, Scope
from safecity.settings import (
    AckKeyFile,
    AckSpentFile,
    DeadletterDir,
    InfluxSettings,
    MqttSettings,
    NotifyDir,
    Port,
    ServiceSettings,
    in_home,
)


class FederationSettings(BaseModel):
    """The federation publisher of this deployment's cities (docs/federation.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(
        default=False,
        description="Publish this deployment's aggregated indicators on its own broker under "
        "safecity/v1/{city}/_federation/ (a bridge carries them to a regional broker).",
    )
    interval: Annotated[float, Field(ge=1, le=86_400)] = Field(
        default=300.0, description="Federation: length of one interval, in seconds."
    )
    delay: Annotated[float, Field(ge=0, le=86_400)] = Field(
        default=60.0,
        description="Federation: seconds after an interval closes before it is computed "
        "(late readings are in).",
    )
    backfill: Annotated[int, Field(ge=0, le=10_000)] = Field(
        default=1, description="Federation: intervals before now published at the first start."
    )
    max_backlog: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=288, description="Federation: most intervals caught up after a long stop."
    )
    publish_timeout: Annotated[float, Field(gt=0, le=600)] = Field(
        default=30.0,
        description="Federation: seconds to wait for the broker's acknowledgements of an "
        "interval before retrying it.",
    )
    username: str = Field(
        default="_federation",
        description="Federation: the publisher's own account on this deployment's broker "
        "(SAFECITY_MQTT__HOST/PORT; role federation: it may write only _federation topics).",
    )
    password: SecretStr | None = Field(
        default=None,
        description="Federation: that account's secret (else looked up in "
        "SAFECITY_MQTT__SECRETS_FILE).",
    )
    state_file: Path | None = Field(
        default=None,
        description="Federation: the last interval published per city; empty = "
        "$SAFECITY_HOME/federation/published.json.",
    )
    corridors: Path | None = Field(
        default=None,
        description="Corridors as data (JSON); empty = the shipped safecity/data/corridors.json.",
    )


class CommandSettings(BaseModel):
    """Commands to devices (docs/commands.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    username: str = Field(
        default="_command",
        description="Commands: the command role's account on the broker (the only one that "
        "may publish commands).",
    )
    password: SecretStr | None = Field(
        default=None,
        description="Commands: that account's secret (else looked up in "
        "SAFECITY_MQTT__SECRETS_FILE).",
    )
    default_expiry: Annotated[float, Field(ge=1, le=7 * 86_400)] = Field(
        default=300.0, description="Commands: expiry of a command that names none (s)."
    )
    max_expiry: Annotated[float, Field(ge=1, le=7 * 86_400)] = Field(
        default=7 * 86_400.0, description="Commands: the longest expiry a caller may ask for (s)."
    )
    result_grace: Annotated[float, Field(ge=0, le=86_400)] = Field(
        default=30.0,
        description="Commands: how long after its expiry a delivered command may still report "
        "its outcome before it counts as failed (s).",
    )
    retry: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=5.0,
        description="Commands: seconds before the first retry while the device has no session "
        "at the broker; each further wait doubles (jittered) up to `retry_max`.",
    )
    retry_max: Annotated[float, Field(gt=0, le=86_400)] = Field(
        default=300.0,
        description="Commands: the longest wait between two tries to a device with no session.",
    )
    max_tries: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=500,
        description="Commands: most tries per device while it has no session at the broker "
        "(each one an attempt row); then that device's status is failed.",
    )
    max_group: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=2000, description="Commands: most devices one group command may address."
    )
    url: str | None = Field(
        default=None,
        description="Commands: the API that owns the command store and broker session (e.g. "
        "http://safecity-api-commands:8000); set, this process runs no command service and "
        "passes the command routes there. Empty: this process is the owner.",
    )


class OidcSettings(BaseModel):
    """Sign-in with the city's OpenID Connect provider (api/README.md: people)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    issuer: str | None = Field(
        default=None,
        description="OIDC: the provider's issuer URL (its discovery document is "
        "<issuer>/.well-known/openid-configuration); empty = no sign-in, API keys only.",
    )
    audience: str = Field(
        default="safecity-api",
        description="OIDC: the audience (aud) a bearer token must carry to be accepted by the API.",
    )
    client_id: str | None = Field(
        default=None,
        description="OIDC: the console's client id at the provider (empty = no console sign-in; "
        "bearer tokens are still accepted).",
    )
    client_secret: SecretStr | None = Field(
        default=None,
        description="OIDC: the console client's secret (empty: a public client, PKCE only).",
    )
    public_url: str | None = Field(
        default=None,
        description="OIDC: the console's public base URL, e.g. https://console.city.example "
        "(the redirect URI is <public_url>/auth/callback); empty = the request's own.",
    )
    scopes: str = Field(
        default="openid profile",
        description="OIDC: the scopes the console asks the provider for (space-separated).",
    )
    roles_claim: str = Field(
        default=ROLES_CLAIM,
        description="OIDC: the claim holding the person's roles or groups; a dotted path "
        "reaches into objects (Keycloak: realm_access.roles).",
    )
    cities_claim: str = Field(
        default="cities",
        description="OIDC: the claim holding the cities the person may see (absent or empty: "
        "every city, as a key created without --city).",
    )
    name_claim: str = Field(
        default="name", description="OIDC: the claim holding the person's display name."
    )
    role_scopes: dict[str, Scope] = Field(
        default_factory=lambda: dict(ROLE_SCOPES),
        description="OIDC: provider role (or group) -> safecity scope, a JSON object; a token "
        "with none of these roles is refused (403).",
    )
    leeway: Annotated[float, Field(ge=0, le=300)] = Field(
        default=60.0,
        description="OIDC: the clock skew tolerated on exp, nbf and iat, seconds (at most 300).",
    )
    algorithms: list[str] = Field(
        default=["RS256", "PS256", "ES256", "EdDSA"],
        description="OIDC: the signature algorithms accepted (never none or an HMAC one).",
    )
    jwks_ttl: Annotated[float, Field(ge=10, le=86_400)] = Field(
        default=3600.0,
        description="OIDC: seconds the discovery document and signing keys are cached (a "
        "token naming an unknown key refetches them at once).",
    )
    session_ttl: Annotated[float, Field(ge=60, le=7 * 86_400)] = Field(
        default=8 * 3600.0,
        description="OIDC: lifetime of a console session, seconds (at most the ID token's "
        "lifetime when that is shorter).",
    )
    timeout: Annotated[float, Field(gt=0, le=60)] = Field(
        default=5.0, description="OIDC: timeout of one call to the provider, seconds."
    )


class ApiSettings(ServiceSettings):
    """Settings of the FastAPI service."""

    influx: InfluxSettings = InfluxSettings()
    host: str = Field("127.0.0.1", description="The API's listen address ...")
    port: Port = Field(8000, description="... and port.")
    stale_after: Annotated[
        float,
        Field(
            gt=0, description="A device silent for longer than this many seconds counts as stale."
        ),
    ] = 900.0
    max_page_size: Annotated[
        int,
        Field(
            ge=1, le=1000, description="Largest page a listing returns (limit=...); at most 1000."
        ),
    ] = 500
    # Security and limits of the public API (docs/reliability.md: keys, rate limits, bounds).
    api_keys_file: Path = Field(
        default_factory=in_home("api_keys_file"),
        description=(
            "API keys, hashed (`safecity apikey create|list|revoke`); re-read when it changes."
        ),
    )
    rate_limit_rps: Annotated[
        float,
        Field(
            gt=0,
            le=100_000,
            description=(
                "Token bucket per API key: sustained requests/s; the excess gets 429 + Retry-After."
            ),
        ),
    ] = 50.0
    rate_limit_burst: Annotated[
        int, Field(ge=1, le=1_000_000, description="Token bucket per API key: burst.")
    ] = 100
    max_body_bytes: Annotated[
        int,
        Field(
            ge=0, le=16 * 1024 * 1024, description="Largest request body accepted, bytes (-> 413)."
        ),
    ] = 16 * 1024
    cors_origins: list[str] = Field(
        [],
        description=(
            'Browser origins allowed by CORS, a JSON list, e.g. ["https://console.example"].'
        ),
    )
    max_range: Annotated[
        float,
        Field(
            gt=0,
            le=366 * 86_400,
            description="Longest time window a request may ask for, seconds (-> 422).",
        ),
    ] = 31 * 86_400.0
    min_bucket: Annotated[
        float, Field(ge=1, le=86_400, description="Shortest series bucket, seconds (-> 422).")
    ] = 10.0
    max_points: Annotated[
        int, Field(ge=10, le=100_000, description="Most buckets per series (-> 422).")
    ] = 5000
    max_export_rows: Annotated[
        int,
        Field(
            ge=1,
            le=10_000_000,
            description=(
                "Most rows one export (CSV/NDJSON) may hold; a larger one is refused "
                "before it starts."
            ),
        ),
    ] = 100_000
    status_lookback: Annotated[
        float,
        Field(
            gt=0,
            le=31 * 86_400,
            description=(
                "How far back device status and last readings are looked up, seconds "
                "(online/stale/offline)."
            ),
        ),
    ] = 86_400.0
    overview_cache_ttl: Annotated[
        float,
        Field(
            ge=0,
            le=300,
            description=(
                "Overview and status snapshots are reused this many seconds, and for as many "
                "more served while the next is computed (0 = always recompute)."
            ),
        ),
    ] = 5.0
    overview_board: bool = Field(
        default=True,
        description="Keep the overview's moving window in memory from the points the ingest "
        "announces (seeded from InfluxDB at start); false reads it from InfluxDB each time.",
    )
    # Delivery accounting: where ingest keeps dead letters (same variable as ingest's)
    # and, optionally, the simulator's ground-truth ledger.
    deadletter_dir: DeadletterDir = Field(default_factory=in_home("deadletter_dir"))
    ledger_file: Path | None = Field(
        None,
        description=(
            "Delivery accounting: the simulator's ground-truth ledger, if any (dead "
            "letters come from SAFECITY_DEADLETTER_DIR)."
        ),
    )
    # Live stream: the broker it subscribes to, and each client's bounded queue.
    mqtt: MqttSettings = MqttSettings()
    stream_queue_size: Annotated[
        int,
        Field(
            ge=1,
            le=100_000,
            description=(
                "Live stream (/v1/stream): each client's queue; a client this far behind "
                "is dropped."
            ),
        ),
    ] = 256
    stream_heartbeat: Annotated[
        float, Field(gt=0, le=300, description="Live stream: seconds between keep-alive comments.")
    ] = 15.0
    # Items kept for clients resuming with Last-Event-ID, the reconnect delay the
    # stream advises, and how many live streams one API key may hold at once.
    stream_replay: Annotated[
        int,
        Field(
            ge=0,
            le=100_000,
            description=(
                "Live-stream events kept for Last-Event-ID resumption (older ones: a `gap` event)."
            ),
        ),
    ] = 1000
    stream_retry_ms: Annotated[
        int,
        Field(
            ge=100,
            le=600_000,
            description="The `retry:` hint (ms) the live stream gives reconnecting clients",
        ),
    ] = 3000
    stream_max_per_key: Annotated[
        int,
        Field(
            ge=1,
            le=1000,
            description="Live streams one API key may hold open at once (429 beyond).",
        ),
    ] = 5
    env: Literal["development", "production"] = Field(
        "development",
        description=(
            "development | production. production: /docs and /redoc off, "
            "/openapi.json only with a key."
        ),
    )
    audit_log_file: Path = Field(
        default_factory=in_home("audit_log_file"),
        description=(
            "Append-only audit log (JSON lines, 0600) of every call an operate/admin "
            "key makes to a route needing that scope."
        ),
    )
    commands_file: Path = Field(
        default_factory=in_home("commands_file"),
        description=(
            "The durable command store (SQLite): every command and its per-device statuses."
        ),
    )
    steps_outbox_file: Path = Field(
        default_factory=in_home("steps_outbox_file"),
        description="The durable outbox (SQLite) of the incident steps taken here, until the "
        "broker has them.",
    )
    commands: CommandSettings = CommandSettings()
    command_hop_key_file: Path = Field(
        default_factory=in_home("command_hop_key_file"),
        description="The key (hex, 0600) every API pod shares: a replica signs the caller it "
        "vouches for on the command hop with it, the command service checks that signature "
        "(made there when missing; a replica needs it: a Kubernetes Secret).",
    )
    sessions_file: Path = Field(
        default_factory=in_home("sessions_file"),
        description=(
            "Console sessions and pending sign-ins (SQLite, hashed ids): replicas that share "
            "the file share the sessions, and a restart keeps them."
        ),
    )
    notify_dir: NotifyDir = Field(default_factory=in_home("notify_dir"))
    ack_key_file: AckKeyFile = Field(default_factory=in_home("ack_key_file"))
    notify_url: str | None = Field(
        default=None,
        description="The notifier's listing (its metrics port, e.g. http://safecity-notify:9104) "
        "when this API cannot read notify_dir (Kubernetes: another pod's volume); empty = read "
        "the outboxes in notify_dir.",
    )
    ack_spent_file: AckSpentFile = Field(default_factory=in_home("ack_spent_file"))
    # Federation: publisher of this city's indicators, and the regional view.
    federation: FederationSettings = FederationSettings()
    region: RegionSettings = RegionSettings()
    # People: sign-in with the city's identity provider (console sessions, bearer tokens).
    oidc: OidcSettings = OidcSettings()
