"""mosquitto.conf for one local instance, rendered from the shipped template beside this module."""

from __future__ import annotations

import os
import pwd
import re
from collections.abc import Sequence
from pathlib import Path

from broker.dynsec import CONTAINER_PLUGIN, DYNSEC_FILE, find_plugin
from broker.guard import CONTAINER_GUARD, find_guard
from safecity.errors import ConfigError, StackError

DEFAULT_MOSQUITTO_CONF = Path(__file__).resolve().parent / "mosquitto.conf"


def current_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        # A uid without a passwd entry (some containers); mosquitto accepts only names.
        return os.environ.get("USER", "root")


_LISTENER_RE = re.compile(r"^\s*listener\s+\S+")
_PERSISTENCE_RE = re.compile(r"^\s*persistence_location\s")
_DROPPED_RE = re.compile(r"^\s*(user|log_dest)\s")


def render_mosquitto_conf(
    template: str,
    *,
    host: str,
    port: int,
    data_dir: Path,
    user: str,
    extra_lines: Sequence[str] = (),
) -> str:
    """Adapt the shared broker config to one local instance (listener, dirs, user, log)."""
    out: list[str] = []
    listener_done = False
    persistence_done = False
    for line in template.splitlines():
        if not listener_done and _LISTENER_RE.match(line):
            out.append(f"listener {port} {host}")
            listener_done = True
        elif _PERSISTENCE_RE.match(line):
            if not persistence_done:
                out.append(f"persistence_location {data_dir}/")
                persistence_done = True
        elif _DROPPED_RE.match(line):
            out.append(f"# (replaced by control.stack) {line.strip()}")
        else:
            out.append(line)
    out.append("")
    out.append("# --- added by control.stack for this local instance ---")
    if not listener_done:
        out.append(f"listener {port} {host}")
    if not persistence_done:
        out.append(f"persistence_location {data_dir}/")
    # As root mosquitto otherwise drops to user `mosquitto`, which cannot write here.
    out.append(f"user {user}")
    out.append(f"log_dest file {data_dir / 'mosquitto.log'}")
    out.extend(extra_lines)
    return "\n".join(out) + "\n"


_ANON_RE = re.compile(r"^\s*allow_anonymous\s+(\S+)", re.MULTILINE)


def require_no_anonymous(conf: str, template: Path) -> None:
    """Refuse a broker config that would let anonymous clients in (there is no opt-out)."""
    values = _ANON_RE.findall(conf)
    if not values or any(v != "false" for v in values):
        raise StackError(
            f"{template}: the broker config must say `allow_anonymous false` (and nothing "
            "else); safecity runs no anonymous MQTT"
        )


# --- secure broker config -----------------------------------------------------------

_TLS_LISTENER_RE = re.compile(r"^\s*listener\s+8883\b")
_LISTENER_OPTION_RE = re.compile(r"^\s*#?\s*[a-z_0-9.]+\s")
# The guard's `plugin` line (the first one: it must answer before dynamic security).
_GUARD_RE = re.compile(r"^\s*plugin\s+\S*safecity_guard\.so\s*$")
_KEY_RE = re.compile(
    r"^\s*#?\s*(plugin|plugin_opt_config_file|cafile|certfile|keyfile|crlfile|pid_file|"
    r"require_certificate|use_identity_as_username)\s"
)


def render_secure_config(
    template: str,
    *,
    dynsec_file: Path,
    pid_file: Path,
    plugin: str | None = None,
    guard: str | None = None,
    tls_port: int | None = None,
    tls_host: str = "127.0.0.1",
    cafile: Path | None = None,
    certfile: Path | None = None,
    keyfile: Path | None = None,
    mutual_tls: bool = False,
    crlfile: Path | None = None,
) -> str:
    """Point broker/mosquitto.conf at local files; control.stack then adapts the rest.

    The plain listener stays the template's first `listener` (stack.render_mosquitto_conf
    binds it to loopback); the TLS listener (`listener 8883`) moves to tls_host:tls_port,
    or is dropped with its options when tls_port is None. `plugin`: the dynamic-security
    plugin's path on this host (default: found where Debian or the image installs it);
    `guard`: the guard plugin's (default: built under build/broker, broker.guard).
    """
    values: dict[str, str | None] = {
        "plugin": plugin if plugin is not None else find_plugin(),
        "plugin_opt_config_file": str(dynsec_file),
        "pid_file": str(pid_file),
        "cafile": str(cafile) if cafile else None,
        "certfile": str(certfile) if certfile else None,
        "keyfile": str(keyfile) if keyfile else None,
        "crlfile": str(crlfile) if crlfile and mutual_tls else None,
        "require_certificate": "true" if mutual_tls else None,
        "use_identity_as_username": "true" if mutual_tls else None,
    }
    if tls_port is not None and not (cafile and certfile and keyfile):
        raise ConfigError("a TLS listener needs cafile, certfile and keyfile")
    out: list[str] = []
    in_tls = False
    for line in template.splitlines():
        if _TLS_LISTENER_RE.match(line):
            in_tls = True
            if tls_port is not None:
                out.append(f"listener {tls_port} {tls_host}")
            continue
        if in_tls and tls_port is None and _LISTENER_OPTION_RE.match(line):
            # Options after a dropped listener would attach to the plain one.
            continue
        if _GUARD_RE.match(line):
            out.append(f"plugin {guard if guard is not None else find_guard()}")
            continue
        match = _KEY_RE.match(line)
        if match is None:
            out.append(line)
            continue
        key = match.group(1)
        value = values[key]
        if value is None:
            # Keep a disabled option visibly disabled.
            out.append(line if line.lstrip().startswith("#") else f"# {line.strip()}")
        else:
            out.append(f"{key} {value}")
    return "\n".join(out) + "\n"


def render_local_config(
    template: str,
    *,
    identity_dir: Path,
    certs_dir: Path,
    data_dir: Path,
    port: int = 1883,
    tls_port: int = 8883,
    host: str = "127.0.0.1",
) -> str:
    """broker/mosquitto.conf for a Mosquitto run on this host from an instance's files:
    its accounts (identity_dir), CA and server certificate (certs_dir), persistence, pid
    and log in data_dir; the plain listener on host:port, TLS on host:tls_port."""
    secure = render_secure_config(
        template,
        dynsec_file=identity_dir.resolve() / DYNSEC_FILE,
        pid_file=data_dir.resolve() / "mosquitto.pid",
        tls_port=tls_port,
        tls_host=host,
        cafile=certs_dir.resolve() / "ca.crt",
        certfile=certs_dir.resolve() / "server.crt",
        keyfile=certs_dir.resolve() / "server.key",
    )
    return render_mosquitto_conf(
        secure, host=host, port=port, data_dir=data_dir.resolve(), user=current_user()
    )


CONTAINER_CONFIG_DIR = Path("/mosquitto/config")
CONTAINER_CERTS_DIR = Path("/mosquitto/certs")
_PLAIN_LISTENER_RE = re.compile(r"^\s*listener\s+1883\b.*$")


def render_container_config(template: str) -> str:
    """broker/mosquitto.conf as the eclipse-mosquitto container of docker compose runs it.

    The plain listener listens on the compose network (never published to the host; the
    services reach `mosquitto:1883`), TLS on 8883 for devices outside; the accounts
    (dynamic-security config) and certificates come from the volumes the provisioning
    step fills; logs go to stdout for `docker compose logs`.
    """
    text = render_secure_config(
        template,
        dynsec_file=CONTAINER_CONFIG_DIR / DYNSEC_FILE,
        plugin=CONTAINER_PLUGIN,
        guard=CONTAINER_GUARD,
        pid_file=Path("/mosquitto/data/mosquitto.pid"),
        tls_port=8883,
        tls_host="0.0.0.0",
        cafile=CONTAINER_CERTS_DIR / "ca.crt",
        certfile=CONTAINER_CERTS_DIR / "server.crt",
        keyfile=CONTAINER_CERTS_DIR / "server.key",
    )
    lines = [
        "listener 1883" if _PLAIN_LISTENER_RE.match(line) else line for line in text.splitlines()
    ]
    return "\n".join(["log_dest stdout", *lines]) + "\n"
