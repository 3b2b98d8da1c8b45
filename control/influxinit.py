"""`safecity influx init`: accounts, database and retention policies on a fresh InfluxDB 1.x.

With authentication on and no user yet, InfluxDB 1.x lets anyone create the first
admin; this creates it from the admin's password file, then the services' non-admin
account, so no password has to pass through a container's environment (the official
image's INFLUXDB_ADMIN_PASSWORD variables are not needed).
"""

from __future__ import annotations

from control.settings import StorageSettings
from safecity.errors import ConfigError, QueryError, StorageAuthError
from safecity.influx import InfluxClient, quote_ident
from safecity.registry import load_cities
from safecity.secrets import read_secret_file
from safecity.settings import InfluxSettings


def _literal(secret: str) -> str:
    """An InfluxQL string literal (single quotes; backslash and quote escaped)."""
    return "'" + secret.replace("\\", "\\\\").replace("'", "\\'") + "'"


async def create_users(settings: StorageSettings) -> list[str]:
    """Create the admin (if InfluxDB has no user) and the service account; say what was done."""
    influx = settings.influx
    if not influx.username or influx.password is None:
        raise ConfigError("influx init --create-users needs the admin's username and password")
    done: list[str] = []
    admin = InfluxClient(influx)
    try:
        try:
            users = await admin.query("SHOW USERS")
        except (QueryError, StorageAuthError) as exc:
            if "create admin user first" not in str(exc):
                raise
            await _create_admin(influx, influx.username, influx.password.get_secret_value())
            done.append(f"created admin {influx.username!r}")
            users = await admin.query("SHOW USERS")
        if settings.service_username:
            names = {row["user"] for s in users for row in s.rows()}
            done += await _service_account(settings, settings.service_username, admin, names)
    finally:
        await admin.close()
    return done


async def _create_admin(influx: InfluxSettings, username: str, password: str) -> None:
    """The first admin, created without credentials (InfluxDB allows that once)."""
    anonymous = InfluxClient(
        InfluxSettings(url=influx.url, database=influx.database, timeout=influx.timeout)
    )
    try:
        await anonymous.execute(
            f"CREATE USER {quote_ident(username)} WITH PASSWORD "
            f"{_literal(password)} WITH ALL PRIVILEGES"
        )
    finally:
        await anonymous.close()


async def _service_account(
    settings: StorageSettings, username: str, admin: InfluxClient, names: set[str]
) -> list[str]:
    """Create (or re-password) the services' account and grant it every city's database."""
    if settings.service_password_file is None:
        raise ConfigError("a service account needs SAFECITY_SERVICE_PASSWORD_FILE")
    password = read_secret_file(settings.service_password_file, "service password file")
    user = quote_ident(username)
    done: list[str] = []
    if username in names:
        await admin.execute(f"SET PASSWORD FOR {user} = {_literal(password)}")
        done.append(f"set the password of {username!r}")
    else:
        await admin.execute(f"CREATE USER {user} WITH PASSWORD {_literal(password)}")
        done.append(f"created user {username!r}")
    # Each city's own database (one city: the configured one).
    cities = load_cities(settings.registry).ids
    for city in cities:
        database = admin.for_city(city, cities)
        await database.ensure_database()
        name = database.settings.database
        await admin.execute(f"GRANT ALL ON {quote_ident(name)} TO {user}")
        done.append(f"granted {username!r} all on {name!r}")
    return done
