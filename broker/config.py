"""mosquitto.conf for one local instance, rendered from the shipped template beside this module."""

from __future__ import annotations

import os
import pwd
import re
from collections.abc import Sequence
from pathlib import Path

from safecity.errors import StackError

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
