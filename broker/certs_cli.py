"""`safecity certs`: the local CA, the broker's server certificate, device certificates.

Revocation is a state of the instance: a revoked device gets no certificate from any
later command or `safecity run` until `certs reinstate` names it. Beside a running
instance, `certs init` never re-issues the broker's server certificate unless asked
(`--reissue-server`), and then keeps the names the instance is reached by.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from broker import certs, identity
from broker.settings import SecuritySettings, security_settings
from safecity import instance, registry
from safecity.errors import ConfigError

__all__ = ["add_parsers"]


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def _instance_server(directory: Path) -> instance.Running | None:
    """The running instance whose broker uses the server certificate in directory, if any."""
    where = instance.layout()
    state = instance.running(where)
    if state is None or directory.resolve() != where.certs_dir.resolve():
        return None
    return state


def _server_hosts(args: argparse.Namespace, directory: Path) -> list[str]:
    """The names the server certificate is for: the given ones, plus (for the instance's
    own directory) the names its local broker is reached by."""
    hosts = list(args.host or certs.DEFAULT_HOSTS)
    if directory.resolve() == instance.layout().certs_dir.resolve():
        hosts += [h for h in certs.DEFAULT_HOSTS if h not in hosts]
    return hosts


def cmd_certs_init(args: argparse.Namespace) -> int:
    """Create the local CA and the broker's server certificate (+ client certificates)."""
    directory = security_settings(certs_dir=args.dir).certs_dir
    hosts = _server_hosts(args, directory)
    running = _instance_server(directory)
    changes = args.force or not certs.server_is_good(directory, hosts)
    if running is not None and changes and not args.reissue_server:
        raise ConfigError(
            f"{directory} holds the broker certificate of the instance running now "
            f"(pid {running.pid}); its broker certificate is left unchanged. Give --dir "
            "for another CA, or --reissue-server to re-issue it for these names too "
            f"(it keeps {', '.join(certs.DEFAULT_HOSTS)})"
        )
    if args.force or not (directory / "ca.crt").exists():
        ca = certs.init_ca(directory, force=args.force)
        server = certs.issue_server(directory, hosts)
    elif args.reissue_server:
        ca = certs.CertPaths(directory / "ca.crt", directory / "ca.key")
        server = certs.issue_server(directory, hosts)
    else:
        # Safe to repeat (compose runs it at every `up`): reuse the CA, renew the server
        # certificate only when it is missing, expiring or for other hosts.
        ca, server = certs.ensure_server(directory, hosts)
    print(f"CA      {ca.cert} (key {ca.key}, 0600)")
    print(f"server  {server.cert} (key {server.key}, 0600; for {', '.join(hosts)})")
    if running is not None and args.reissue_server:
        _say("the running broker takes the new server certificate at its next SIGHUP or start")
    _each(certs.issue_client, directory, args.client or ())
    return 0


def _each(
    issue: Callable[[Path, str], certs.CertPaths], directory: Path, device_ids: Sequence[str]
) -> None:
    """Issue a certificate per device with `issue` and say where each one is."""
    for device_id in device_ids:
        client = issue(directory, device_id)
        print(f"client  {client.cert} (key {client.key}, 0600)")


def cmd_certs_client(args: argparse.Namespace) -> int:
    """Issue client certificates (CN = device id) from the existing CA."""
    _each(certs.issue_client, security_settings(certs_dir=args.dir).certs_dir, args.device_id)
    return 0


def _reload_for_certs(args: argparse.Namespace, settings: SecuritySettings) -> None:
    """SIGHUP a running broker so its TLS listener re-reads the CRL."""
    pid = args.broker_pid
    if pid is None and settings.broker_pidfile is not None:
        pid = identity.read_pidfile(settings.broker_pidfile)
    if pid is not None:
        identity.reload_broker(pid)
        _say(f"broker (pid {pid}) reloaded with SIGHUP: CRL re-read")
    else:
        _say("no broker pid given: reload it yourself (kill -HUP <pid>)")


def cmd_certs_provision(args: argparse.Namespace) -> int:
    """A client certificate for every registry device (or the given ones) lacking a good one;
    revoked devices stay without one."""
    settings = security_settings(certs_dir=args.dir, registry=args.registry)
    cities = registry.load_cities(settings.registry)
    wanted = args.device or [d.id for city in cities.values() for d in city.devices]
    unknown = [d for d in wanted if cities.owner(d) is None]
    if unknown:
        sources = ", ".join(c.source for c in cities.values())
        raise ConfigError(f"not in the registry {sources}: {', '.join(unknown)}")
    issued = certs.ensure_clients(settings.certs_dir, wanted)
    certs.ensure_crl(settings.certs_dir)
    refused = sorted(set(wanted) & set(certs.revoked_devices(settings.certs_dir)))
    clients = settings.certs_dir / "clients"
    reused = len(wanted) - len(issued) - len(refused)
    print(
        f"{len(issued)} client certificate(s) issued, {reused} reused, "
        f"{len(refused)} revoked device(s) skipped ({', '.join(cities.ids)})"
    )
    if refused:
        _say(f"revoked, no certificate (`certs reinstate` them): {', '.join(refused)}")
    print(f"clients {clients} (SAFECITY_EDGE__TLS_CLIENT_DIR)")
    return 0


def cmd_certs_rotate(args: argparse.Namespace) -> int:
    """New key and certificate per device; the previous certificate is revoked."""
    settings = security_settings(certs_dir=args.dir, broker_pidfile=args.pidfile)
    _each(certs.rotate_client, settings.certs_dir, args.device_id)
    _reload_for_certs(args, settings)
    return 0


def cmd_certs_revoke(args: argparse.Namespace) -> int:
    """Revoke the devices' certificates (CRL) and delete them; the devices stay revoked."""
    settings = security_settings(certs_dir=args.dir, broker_pidfile=args.pidfile)
    for device_id in args.device_id:
        serial = certs.revoke_client(settings.certs_dir, device_id)
        print(f"revoked {device_id} (serial {serial:x}); no certificate until reinstated")
    print(f"CRL     {settings.certs_dir / certs.CRL_FILE}")
    _reload_for_certs(args, settings)
    return 0


def cmd_certs_reinstate(args: argparse.Namespace) -> int:
    """A revoked device gets a new certificate (its old ones stay revoked)."""
    _each(certs.reinstate_client, security_settings(certs_dir=args.dir).certs_dir, args.device_id)
    _say(f"reinstated: {', '.join(args.device_id)}")
    return 0


_DIR_HELP = "certificate directory (default: $SAFECITY_HOME/certs, e.g. var/stack/certs)"


def _init_parser(certs_cmd: Any) -> None:
    p = certs_cmd.add_parser("init", help="create a CA and the broker's server certificate")
    p.add_argument("--dir", type=Path, help=_DIR_HELP)
    p.add_argument(
        "--host",
        action="append",
        help="server name or IP (repeatable; default: localhost, 127.0.0.1, ::1)",
    )
    p.add_argument("--client", action="append", help="also issue a client cert (CN = device id)")
    p.add_argument("--force", action="store_true", help="replace an existing CA")
    p.add_argument(
        "--reissue-server",
        action="store_true",
        help="re-issue the server certificate for --host even beside a running instance "
        "(its local names are kept)",
    )
    p.set_defaults(func=cmd_certs_init)


def add_parsers(sub: Any) -> None:
    """Add the `certs` command group to the `safecity` parser."""
    certs_cmd = sub.add_parser("certs", help="local CA and TLS certificates").add_subparsers(
        dest="certs_command", required=True, metavar="ACTION"
    )
    _init_parser(certs_cmd)
    p = certs_cmd.add_parser("client", help="issue client certificates (CN = device id)")
    p.add_argument("--dir", type=Path, help=_DIR_HELP)
    p.add_argument("device_id", nargs="+")
    p.set_defaults(func=cmd_certs_client)
    p = certs_cmd.add_parser(
        "provision",
        help="client certificates for every registry device that lacks a good one "
        "(revoked devices stay without)",
    )
    p.add_argument("--dir", type=Path, help=_DIR_HELP)
    p.add_argument(
        "--registry",
        help="city registries: files (comma-separated) or a directory (default: the "
        "running instance's cities, else Tashkent)",
    )
    p.add_argument("--device", action="append", help="only this device (repeatable)")
    p.set_defaults(func=cmd_certs_provision)
    p = certs_cmd.add_parser(
        "reinstate", help="a new certificate for revoked devices (explicitly undoes revoke)"
    )
    p.add_argument("--dir", type=Path, help=_DIR_HELP)
    p.add_argument("device_id", nargs="+")
    p.set_defaults(func=cmd_certs_reinstate)
    for name, func, text in (
        ("rotate", cmd_certs_rotate, "new device certificates; the old ones are revoked"),
        ("revoke", cmd_certs_revoke, "revoke devices: certificates into the CRL, deleted"),
    ):
        p = certs_cmd.add_parser(name, help=text)
        p.add_argument("--dir", type=Path, help=_DIR_HELP)
        p.add_argument("--pidfile", type=Path, help="Mosquitto pid_file: SIGHUP it after")
        p.add_argument("--broker-pid", type=int, help="Mosquitto pid to SIGHUP after")
        p.add_argument("device_id", nargs="+")
        p.set_defaults(func=func)
