"""The one exception hierarchy: everything safecity raises on purpose derives from SafecityError."""


class SafecityError(Exception):
    """Root of every error safecity raises on purpose."""


class ConfigError(SafecityError):
    """Settings, flags or files that cannot be used as given."""


class TopicError(SafecityError):
    """A topic or identifier that does not fit the topic scheme."""


class RegistryError(SafecityError):
    """A city registry file or entry that is malformed or inconsistent."""


class BackupError(ConfigError):
    """A backup that cannot be taken, or one that restore refuses (names the file)."""


class StackError(SafecityError):
    """A local service (broker, database) that cannot be started, reached or stopped."""


class MqttError(SafecityError):
    """An MQTT operation that failed (connect, publish refused, subscribe refused)."""


class ConnectRefusedError(MqttError):
    """The broker answered a CONNECT with a refusal (CONNACK reason >= 0x80)."""


class StorageError(SafecityError):
    """An InfluxDB request that failed."""


class CliError(SafecityError):
    """A command-line usage error, reported as one line."""


class AckError(SafecityError):
    """An acknowledgement payload that does not parse."""


class IncidentError(SafecityError):
    """An incident that does not exist or cannot be read."""


class TransitionError(IncidentError):
    """A lifecycle transition that the state machine refuses."""


class WriteRejectedError(StorageError):
    """InfluxDB refused (part of) a batch for its content: 400 or 413. Retrying won't help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"InfluxDB {status}: {message}")
        self.status = status
        self.message = message

    @property
    def partial(self) -> bool:
        """True for a `partial write`: the valid points of the batch were stored."""
        return "partial write" in self.message


class StorageUnavailableError(StorageError):
    """InfluxDB is down, slow or overloaded (refused, timeout, 429, 5xx): retry later."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StorageAuthError(StorageError):
    """InfluxDB refused our credentials or database (401/403/404): an operator must act."""


class QueryError(StorageError):
    """InfluxDB could not run a query."""


class LineProtocolError(SafecityError):
    """A point that cannot be written as exactly one valid line."""


class WireError(MqttError):
    """Bytes that are not a well-formed MQTT packet (or a value that cannot be encoded)."""


class SpoolError(SafecityError):
    """The spool cannot store or read a batch (disk full, permissions, corruption)."""


class SpoolFullError(SpoolError):
    """The spool has reached its capacity; the caller must stop acking (back-pressure)."""


class ApiKeyError(SafecityError):
    """A key-store problem: bad scope or name, unknown id, unreadable file."""


class ExportError(SafecityError):
    """The API refused the export or could not be reached."""


class TooManyStreamsError(SafecityError):
    """The API key already holds as many live streams as it may."""


class ApiStartupError(SafecityError):
    """The API server could not start (port in use, start-up failure)."""


class RulesError(SafecityError):
    """A rule file that cannot be loaded; the message names the file and line."""


class PushError(SafecityError):
    """Grafana refused or could not be reached; the message says which object and why."""


class VerifyError(SafecityError):
    """The ledger or dead-letter store cannot be read."""


class ScenarioError(SafecityError):
    """A scenario file that cannot be loaded."""


class WriteDeferredError(StorageError):
    """InfluxDB stayed unavailable past the caller's `give_up_after`; spool the batch."""


class FederationError(SafecityError):
    """A federation message refused: `reason` is its dead-letter reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class CommandError(SafecityError):
    """A command or command result that breaks the contract (unknown name, bad parameters,
    malformed payload); the message names the bad value."""


class OutboxError(SafecityError):
    """The outbox database cannot be opened, written or read."""


class AckLinkError(SafecityError):
    """An acknowledgement link refused: `reason` is forged, malformed, expired or reused."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class RoutingError(SafecityError):
    """A routing file, channel or secret the notifier cannot use; the message names it."""
