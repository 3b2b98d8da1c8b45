"""The one exception hierarchy: everything safecity raises on purpose derives from SafecityError."""


class SafecityError(Exception):
    """Root of every error safecity raises on purpose."""


class ConfigError(SafecityError):
    """Settings, flags or files that cannot be used as given."""


class TopicError(SafecityError):
    """A topic or identifier that does not fit the topic scheme."""


class RegistryError(SafecityError):
    """A city registry file or entry that is malformed or inconsistent."""


class StackError(SafecityError):
    """A local service (broker, database) that cannot be started, reached or stopped."""


class MqttError(SafecityError):
    """An MQTT operation that failed (connect, publish refused, subscribe refused)."""


class StorageError(SafecityError):
    """An InfluxDB request that failed."""


class CliError(SafecityError):
    """A command-line usage error, reported as one line."""
