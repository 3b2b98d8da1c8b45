"""The same accounts and ACLs for a clustered MQTT v5 broker (EMQX 5), from the files the
Mosquitto tooling renders: the dynamic-security roles are translated rule by rule, the
accounts come from the provisioning secrets (EMQX hashes them itself on import), and one
emqx.conf sets the limits and durability the platform relies on."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping

from safecity.errors import ConfigError

from .identity import PBKDF2_ITERATIONS

# dynamic-security ACL types -> EMQX actions. Receiving has no separate check in EMQX:
# what a client may subscribe to is what it receives.
_ACTIONS = {
    "publishClientSend": "publish",
    "subscribePattern": "subscribe",
    "subscribeLiteral": "subscribe",
}


def _topic(topic: str) -> str:
    """A topic filter as an Erlang string."""
    if '"' in topic or "\\" in topic:
        raise ConfigError(f"ACL topic {topic!r} cannot be written for EMQX")
    return f'"{topic}"'


def render_acl(dynsec_config: str) -> str:
    """EMQX's acl.conf (file authorization) equal to the Mosquitto dynamic-security config.

    Each account gets its roles' allow rules (publish, subscribe); everything else is
    denied (the last rule). EMQX checks a shared subscription `$share/g/t` against `t`,
    so the `$share/+/...` patterns need no rule of their own: an account that may not
    subscribe to `t` cannot join a share group on it either.
    """
    try:
        config = json.loads(dynsec_config)
        roles = {r["rolename"]: r.get("acls", []) for r in config["roles"]}
        clients = config["clients"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"not a dynamic-security config: {exc}") from exc
    out = [
        "%% Rendered by `safecity broker config --target emqx` from the broker's",
        "%% dynamic-security config; edits are overwritten.",
    ]
    for client in sorted(clients, key=lambda c: c["username"]):
        who = f'{{username, "{client["username"]}"}}'
        for role in client.get("roles", []):
            for acl in roles.get(role["rolename"], []):
                if acl.get("allow") is not True:
                    raise ConfigError(f"deny rules are not rendered for EMQX: {acl}")
                action = _ACTIONS.get(acl["acltype"])
                topic = acl["topic"]
                if action is None or topic.startswith("$share/"):
                    continue
                out.append(f"{{allow, {who}, {action}, [{_topic(topic)}]}}.")
    out.append("{deny, all}.")
    return "\n".join(out) + "\n"


def render_users(secrets: Mapping[str, str], superusers: Iterable[str] = ()) -> str:
    """The bootstrap file of EMQX's built-in database (bootstrap_type = plain): one line a
    username with its secret; EMQX stores only the hash it computes on import."""
    admins = set(superusers)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["user_id", "password", "is_superuser"])
    for username in sorted(secrets):
        writer.writerow([username, secrets[username], str(username in admins).lower()])
    return buffer.getvalue()


def render_conf(*, cluster_dns: str, certs_dir: str, config_dir: str, cookie: str) -> str:
    """emqx.conf: node, authentication, authorization, MQTT limits, TLS, clustering."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{16,}", cookie):
        raise ConfigError("the EMQX node cookie must be 16+ URL-safe characters")
    return f"""\
# Rendered by `safecity broker config --target emqx`; edits are overwritten.
# The node name comes from EMQX_NODE__NAME (the pod's DNS name); the cookie, a secret
# shared by the cluster's nodes, is kept in the credential store (emqx.cookie).
node {{
  cookie = "{cookie}"
  data_dir = "/opt/emqx/data"
}}
dashboard {{listeners.http {{bind = 0}}}}
# The same limits as broker/mosquitto.conf: no anonymous access, QoS <= 1, no retained
# messages, 16 KiB packets, large queues for a paused ingest.
authentication = [
  {{
    mechanism = password_based
    backend = built_in_database
    user_id_type = username
    password_hash_algorithm {{
      name = pbkdf2, mac_fun = sha512, iterations = {PBKDF2_ITERATIONS}, dk_length = 64
    }}
    bootstrap_file = "{config_dir}/users.csv"
    bootstrap_type = plain
  }}
]
authorization {{
  no_match = deny
  deny_action = disconnect
  cache {{enable = false}}
  sources = [{{type = file, enable = true, path = "{config_dir}/acl.conf"}}]
}}
mqtt {{
  max_packet_size = 16KB
  max_qos_allowed = 1
  retain_available = false
  max_inflight = 1000
  max_mqueue_len = 2000000
  mqueue_store_qos0 = false
  session_expiry_interval = 7d
}}
# Sessions and their queued messages survive the loss of a node (EMQX >= 5.7).
durable_sessions {{enable = true}}
listeners.tcp.default {{bind = "0.0.0.0:1883"}}
listeners.ssl.default {{
  bind = "0.0.0.0:8883"
  ssl_options {{
    cacertfile = "{certs_dir}/ca.crt"
    certfile = "{certs_dir}/server.crt"
    keyfile = "{certs_dir}/server.key"
    versions = ["tlsv1.3", "tlsv1.2"]
  }}
}}
listeners.ws.default {{enable = false}}
listeners.wss.default {{enable = false}}
cluster {{
  discovery_strategy = dns
  dns {{name = "{cluster_dns}", record_type = srv}}
}}
"""
