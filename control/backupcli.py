"""The `safecity backup` and `safecity restore` commands (progress on stderr, JSON logs)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from control.backupset import manifest_summary
from control.settings import BackupSettings
from safecity.cliargs import settings as build_settings
from safecity.observability import configure_logging

__all__ = ["add_parsers"]


def _say(command: str) -> Callable[[str], None]:
    """Progress lines on stderr, each naming the command (the result goes to stdout)."""

    def say(text: str) -> None:
        print(f"{command}: {text}", file=sys.stderr, flush=True)

    return say


def cmd_backup(args: argparse.Namespace) -> int:
    """Back the instance up into a new directory; print the manifest's summary."""
    from control.backup import backup

    settings = build_settings(BackupSettings)
    configure_logging("backup", settings.log_level)
    manifest = backup(settings, args.dir, _say("backup"))
    print(manifest_summary(manifest))
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """Check a backup and restore it into the instance directory."""
    from control.restore import restore

    settings = build_settings(BackupSettings)
    configure_logging("restore", settings.log_level)
    manifest = restore(settings, args.dir, _say("restore"), force=args.force)
    print(manifest_summary(manifest))
    return 0


def add_parsers(sub: Any) -> None:
    """Add `backup` and `restore` to the `safecity` command."""
    p = sub.add_parser(
        "backup",
        help="back the instance up (while it runs): databases, keys, secrets, CA, broker "
        "accounts, service state; a manifest with checksums and the recovery point",
    )
    p.add_argument("dir", type=Path, help="a new (or empty) directory for the backup")
    p.set_defaults(func=cmd_backup)
    p = sub.add_parser(
        "restore", help="check a backup and restore it into the instance (SAFECITY_HOME)"
    )
    p.add_argument("dir", type=Path, help="the backup directory (from `safecity backup`)")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace a non-empty (stopped) instance; without it only an empty one is used",
    )
    p.set_defaults(func=cmd_restore)
