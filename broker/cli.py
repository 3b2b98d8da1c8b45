"""`safecity devices` (accounts), `safecity certs` (CA, device certificates), `broker config`."""

from __future__ import annotations

import argparse
import secrets as secrets_module
import sys
from pathlib import Path
from typing import Any

from broker import certs_cli, config, emqx, identity
from broker.bridge import bridge_username, render_bridge
from broker.dynsec import DYNSEC_FILE, DynsecAdmin
from broker.identity import CredentialStore, Role
from broker.settings import SecuritySettings
from broker.settings import security_settings as _settings
from safecity import instance, registry
from safecity.errors import ConfigError
from safecity.secrets import read_secrets
from safecity.settings import MqttSettings

__all__ = ["add_parsers"]


def _store(args: argparse.Namespace) -> tuple[SecuritySettings, CredentialStore]:
    settings = _settings(identity_dir=args.identity_dir, broker=args.broker, registry=args.registry)
    own = instance.layout(settings.home).identity_dir.resolve()
    if args.broker is None and settings.identity_dir.resolve() != own:
        # Another instance's accounts (e.g. a region's): the running broker here is not theirs.
        settings = settings.model_copy(update={"broker": None})
    return settings, CredentialStore(settings.identity_dir)


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def _save(store: CredentialStore) -> str:
    """Save the store and the broker's config; return the `_admin` secret."""
    admin_secret = store.ensure_admin()
    store.save()
    _say(f"wrote {store.path} and {store.dynsec_file}")
    return admin_secret


def _apply(
    settings: SecuritySettings,
    store: CredentialStore,
    admin_secret: str,
    changes: dict[str, str | None],
) -> None:
    """Put saved changes on the running broker (after the new secrets were handed out, so
    a broker that cannot be reached loses no secret: it takes them at its next start)."""
    if not changes:
        return
    if settings.broker is None:
        _say(
            "no running broker given (--broker / SAFECITY_BROKER): "
            "the changes take effect at the broker's next start"
        )
        return
    host, _, port = settings.broker.rpartition(":")
    mqtt = MqttSettings(
        host=host,
        port=int(port),
        username=identity.service_username(Role.ADMIN),
        password=admin_secret,
    )
    commands = [c for name, secret in changes.items() for c in store.commands(name, secret)]
    try:
        DynsecAdmin(mqtt).apply(commands)
    except ConfigError as exc:
        raise ConfigError(
            f"saved, but the broker at {settings.broker} was NOT changed ({exc}); "
            "it takes the saved accounts at its next start"
        ) from exc
    _say(
        f"applied to the broker at {settings.broker}: {len(changes)} account(s); "
        "their live sessions (if any) were closed"
    )


def _keep_local(
    store: CredentialStore, args: argparse.Namespace, changes: dict[str, str | None]
) -> None:
    """The instance's own secrets file (`<identity dir>/secrets.json`, what the local
    simulated fleet logs in with) follows every change: new secrets in, revoked ones out."""
    path = store.directory / identity.SECRETS_FILE
    if not changes or not path.exists() or args.secrets_file == path:
        return
    identity.write_secrets(path, {k: v for k, v in changes.items() if v is not None})
    identity.drop_secrets(path, [k for k, v in changes.items() if v is None])
    _say(f"{path} updated: the local fleet logs in with the new secret(s)")


def _hand_out(args: argparse.Namespace, issued: dict[str, str]) -> None:
    """Show new secrets once: on stdout, or only into a 0600 secrets file."""
    if not issued:
        return
    if args.secrets_file is not None:
        identity.write_secrets(args.secrets_file, issued)
        _say(f"{len(issued)} secret(s) written to {args.secrets_file} (mode 0600)")
        return
    for username, secret in sorted(issued.items()):
        print(f"{username} {secret}")
    _say("secrets are shown only once; only their hashes are stored")


def _provision_one(
    store: CredentialStore, name: str, role: Role, city: str | None, issued: dict[str, str]
) -> None:
    secret = store.provision(name, role, city)
    if secret is not None:
        issued[name] = secret
        _say(f"provisioned {name} (new account)")
        return
    account = store.accounts[name]
    if account.active:
        _say(f"{name}: already provisioned and active; unchanged (rotate it for a new secret)")
    else:
        _say(
            f"{name}: revoked since {account.revoked}; unchanged "
            f"(`devices reinstate {name}` gives it a new secret)"
        )


def cmd_provision(args: argparse.Namespace) -> int:
    """Provision every registry device (or the ones named) and the service accounts."""
    settings, store = _store(args)
    issued: dict[str, str] = {}
    cities = registry.load_cities(settings.registry)
    if args.city and not args.service:
        raise ConfigError("--city scopes a service account: give --service too")
    if args.device:
        owners = {d: cities.owner(d) for d in args.device}
        for device_id, owner in owners.items():
            if owner is None:
                sources = ", ".join(c.source for c in cities.values())
                raise ConfigError(f"device {device_id!r} is not in the registry {sources}")
        for device_id, owner in owners.items():
            assert owner is not None
            _provision_one(store, device_id, Role.DEVICE, owner.id, issued)
    for role in args.service or ():
        for city in args.city or [None]:
            name = identity.service_username(role, city)
            _provision_one(store, name, Role(role), city, issued)
    for bridged in args.bridge or ():
        # On the regional broker: the account a city's bridge logs in with.
        _provision_one(store, bridge_username(bridged), Role.BRIDGE, bridged, issued)
    if not args.device and not args.service and not args.bridge:
        for city in cities.values():
            issued.update(store.provision_city(city))
        for name in sorted(issued):
            _say(f"provisioned {name} (new account)")
    _say(f"provisioned {len(issued)} new account(s)")
    admin_secret = _save(store)
    _keep_local(store, args, dict(issued))
    _hand_out(args, issued)
    _apply(settings, store, admin_secret, dict(issued))
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    """Issue new secrets for active accounts; a revoked one is refused, nothing changes."""
    settings, store = _store(args)
    issued = {name: store.rotate(name) for name in args.username}
    for name in issued:
        _say(f"rotated {name}: new secret issued, the old one no longer works")
    admin_secret = _save(store)
    _keep_local(store, args, dict(issued))
    _hand_out(args, issued)
    _apply(settings, store, admin_secret, dict(issued))
    return 0


def cmd_reinstate(args: argparse.Namespace) -> int:
    """Give revoked accounts a new secret; active ones are refused, nothing changes."""
    settings, store = _store(args)
    issued = {name: store.reinstate(name) for name in args.username}
    for name in issued:
        _say(f"reinstated {name}: new secret issued")
    admin_secret = _save(store)
    _keep_local(store, args, dict(issued))
    _hand_out(args, issued)
    _apply(settings, store, admin_secret, dict(issued))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    """Revoke accounts; a running broker closes their live sessions."""
    settings, store = _store(args)
    changes: dict[str, str | None] = {}
    for name in args.username:
        account = store.accounts.get(name)
        if account is not None and not account.active:
            _say(f"{name}: already revoked since {account.revoked}; unchanged")
            continue
        store.revoke(name)
        changes[name] = None
        _say(f"revoked {name}")
    admin_secret = _save(store)
    if args.secrets_file is not None:
        identity.drop_secrets(args.secrets_file, args.username)
    _keep_local(store, args, changes)
    _apply(settings, store, admin_secret, changes)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """List accounts (never secrets or hashes)."""
    _, store = _store(args)
    print(f"{'username':40} {'role':10} {'status':8} updated")
    for account in sorted(store.accounts.values(), key=lambda a: (a.role, a.username)):
        status = "active" if account.active else "revoked"
        print(f"{account.username:40} {account.role.value:10} {status:8} {account.updated}")
    return 0


def cmd_broker_config(args: argparse.Namespace) -> int:
    """Write the broker config for the Mosquitto container, or EMQX's files."""
    if args.target == "emqx":
        return _emqx_config(args)
    if args.template is None:
        raise ConfigError("broker config --target mosquitto needs --template")
    template = args.template.read_text(encoding="utf-8")
    if args.local:
        settings = _settings(identity_dir=args.identity_dir)
        text = config.render_local_config(
            template,
            identity_dir=settings.identity_dir,
            certs_dir=settings.certs_dir,
            data_dir=args.out.resolve().parent / "mosquitto-data",
        )
    else:
        text = config.render_container_config(template)
    if args.bridge is not None:
        text = text.rstrip("\n") + "\n" + "\n".join(_bridge_lines(args)) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.bridge is not None:
        # It holds the bridge's password: never readable by others, even briefly.
        identity._write_private(args.out, text)
    else:
        args.out.write_text(text, encoding="utf-8")
    print(f"broker config written to {args.out}", file=sys.stderr)
    return 0


def _bridge_lines(args: argparse.Namespace) -> list[str]:
    """The federation bridge sections from the --bridge-* flags: one per city, each with
    that city's own account on the regional broker."""
    cities = args.bridge_city or []
    if not cities or args.bridge_ca is None or args.bridge_secrets_file is None:
        raise ConfigError("--bridge needs --bridge-city, --bridge-ca and --bridge-secrets-file")
    if args.bridge_username is not None and len(cities) > 1:
        raise ConfigError("--bridge-username names one city's account: give one --bridge-city")
    secrets = read_secrets(args.bridge_secrets_file)
    lines: list[str] = []
    for city in cities:
        username = args.bridge_username or bridge_username(city)
        if username not in secrets:
            raise ConfigError(f"no secret for {username} in {args.bridge_secrets_file}")
        lines += render_bridge(
            address=args.bridge,
            cities=[city],
            cafile=args.bridge_ca,
            username=username,
            password=secrets[username],
        )
    return lines


def _emqx_config(args: argparse.Namespace) -> int:
    """EMQX's acl.conf, users.csv and emqx.conf fragment into the directory --out."""
    directory = args.identity_dir or _settings().identity_dir
    acl = directory / DYNSEC_FILE
    if not acl.exists():
        raise ConfigError(f"no accounts at {acl}: run `safecity devices provision` first")
    secrets_file = args.secrets_file or directory / identity.SECRETS_FILE
    secrets = identity.read_secrets(secrets_file)
    if not secrets:
        raise ConfigError(f"no secrets in {secrets_file}: EMQX needs them to import")
    cookie_file = directory / "emqx.cookie"
    if not cookie_file.exists():
        cookie_file.write_text(secrets_module.token_urlsafe(32), encoding="utf-8")
        cookie_file.chmod(0o600)
    args.out.mkdir(parents=True, exist_ok=True)
    files = {
        "acl.conf": emqx.render_acl(acl.read_text(encoding="utf-8")),
        "users.csv": emqx.render_users(secrets),
        "emqx.conf": emqx.render_conf(
            cluster_dns=args.cluster_dns,
            certs_dir=args.certs_dir,
            config_dir=args.config_dir,
            cookie=cookie_file.read_text(encoding="utf-8").strip(),
        ),
    }
    for name, text in files.items():
        path = args.out / name
        path.write_text(text, encoding="utf-8")
        path.chmod(0o600)
        print(f"EMQX {name} written to {path}", file=sys.stderr)
    return 0


def add_parsers(sub: Any) -> None:
    """Add the `devices` and `certs` command groups to the `safecity` parser."""
    devices = sub.add_parser(
        "devices", help="device and service identities on the broker"
    ).add_subparsers(dest="devices_command", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser, secrets_file: bool = True) -> None:
        p.add_argument("--identity-dir", type=Path, help="credential store directory")
        p.add_argument(
            "--registry",
            help="city registries: a file, several comma-separated, or a directory "
            "(default: Tashkent)",
        )
        p.add_argument(
            "--broker",
            metavar="HOST:PORT",
            help="running broker to apply the changes to at once (SAFECITY_BROKER)",
        )
        if secrets_file:
            p.add_argument(
                "--secrets-file",
                type=Path,
                help="write new secrets to this 0600 JSON file instead of printing them",
            )

    p = devices.add_parser("provision", help="create accounts: all registry devices + services")
    common(p)
    p.add_argument("--device", action="append", help="only this device (repeatable)")
    p.add_argument(
        "--service",
        action="append",
        choices=[r.value for r in identity.SERVICE_ROLES],
        help="only this service account (repeatable)",
    )
    p.add_argument(
        "--city",
        action="append",
        help="scope the --service accounts to this city (`_<service>.<city>`: only "
        "safecity/v1/<city>/... topics; repeatable)",
    )
    p.add_argument(
        "--bridge",
        action="append",
        metavar="CITY",
        help="only the account of this city's federation bridge, `_bridge.CITY` (on the "
        "regional broker; repeatable)",
    )
    p.set_defaults(func=cmd_provision)
    p = devices.add_parser("rotate", help="new secret for accounts")
    common(p)
    p.add_argument("username", nargs="+")
    p.set_defaults(func=cmd_rotate)
    p = devices.add_parser("reinstate", help="new secret for revoked accounts")
    common(p)
    p.add_argument("username", nargs="+")
    p.set_defaults(func=cmd_reinstate)
    p = devices.add_parser("revoke", help="revoke accounts")
    common(p)
    p.add_argument("username", nargs="+")
    p.set_defaults(func=cmd_revoke)
    p = devices.add_parser("list", help="list accounts")
    common(p, secrets_file=False)
    p.set_defaults(func=cmd_list)
    _add_broker_parsers(sub)
    certs_cli.add_parsers(sub)


def _add_broker_parsers(sub: Any) -> None:
    """Add the `broker config` command."""
    broker = sub.add_parser("broker", help="broker configuration").add_subparsers(
        dest="broker_command", required=True, metavar="ACTION"
    )
    p = broker.add_parser(
        "config", help="render the broker container's config (Mosquitto, or EMQX's files)"
    )
    p.add_argument("--target", choices=["mosquitto", "emqx"], default="mosquitto")
    p.add_argument("--template", type=Path, help="broker/mosquitto.conf (target mosquitto)")
    p.add_argument(
        "--out", type=Path, required=True, help="the config file (mosquitto) or directory (emqx)"
    )
    p.add_argument(
        "--local",
        action="store_true",
        help="a config for Mosquitto on this host, from the instance's accounts and "
        "certificates (listeners 127.0.0.1:1883 and :8883; data beside --out); default: "
        "the container's (paths under /mosquitto/)",
    )
    p.add_argument(
        "--identity-dir", type=Path, help="credential store (target emqx, or with --local)"
    )
    p.add_argument("--secrets-file", type=Path, help="issued secrets (target emqx)")
    p.add_argument(
        "--cluster-dns",
        default="safecity-broker-headless.safecity.svc.cluster.local",
        help="the SRV name EMQX nodes find each other by (target emqx)",
    )
    p.add_argument("--certs-dir", default="/opt/emqx/etc/certs", help="(target emqx)")
    p.add_argument("--config-dir", default="/opt/emqx/etc/safecity", help="(target emqx)")
    p.add_argument(
        "--bridge",
        metavar="HOST:PORT",
        help="add a federation bridge to this regional broker's TLS listener (target mosquitto)",
    )
    p.add_argument(
        "--bridge-city",
        action="append",
        metavar="CITY",
        help="a city whose safecity/v1/CITY/_federation/# the bridge carries (repeatable)",
    )
    p.add_argument("--bridge-ca", type=Path, help="CA certificate of the regional broker")
    p.add_argument(
        "--bridge-username", help="account on the regional broker (default: _bridge.<city>)"
    )
    p.add_argument(
        "--bridge-secrets-file",
        type=Path,
        help="0600 JSON {username: secret} holding the bridge account's secret",
    )
    p.set_defaults(func=cmd_broker_config)
