"""Builds a routing file's channels: secrets read from their files at start, or refused."""

from __future__ import annotations

from pathlib import Path

from notify import routing as r
from notify.channels.base import Channel
from notify.channels.local import LocalChannel
from notify.channels.sms import SmsChannel
from notify.channels.smtp import SmtpChannel
from notify.channels.telegram import TelegramChannel
from notify.channels.webhook import WebhookChannel
from safecity.errors import ConfigError, RoutingError
from safecity.secrets import read_secret_file


def _secret(path: Path, channel: str, what: str) -> str:
    try:
        return read_secret_file(path, f"channel {channel!r} {what}")
    except ConfigError as exc:
        raise RoutingError(str(exc)) from None


def build(name: str, spec: r.AnyChannel, console_file: Path) -> Channel:
    """The channel `name` of a routing file; RoutingError naming an unreadable secret."""
    if isinstance(spec, r.LocalChannel):
        return LocalChannel(console_file)
    if isinstance(spec, r.WebhookChannel):
        secret = _secret(spec.secret_file, name, "secret_file")
        return WebhookChannel(spec.url, secret.encode(), spec.timeout_s)
    if isinstance(spec, r.TelegramChannel):
        token = _secret(spec.token_file, name, "token_file")
        return TelegramChannel(spec.base_url, token, spec.timeout_s)
    if isinstance(spec, r.SmsChannel):
        bearer = _secret(spec.token_file, name, "token_file") if spec.token_file else None
        return SmsChannel(spec.url, spec.template, bearer, spec.timeout_s)
    login = None
    if spec.username is not None:
        if spec.password_file is None:
            raise RoutingError(f"channel {name!r}: username given without password_file")
        login = (spec.username, _secret(spec.password_file, name, "password_file"))
    return SmtpChannel(
        spec.host,
        spec.port,
        spec.sender,
        starttls=spec.starttls,
        login=login,
        ca_file=spec.ca_file,
        timeout_s=spec.timeout_s,
    )


def build_all(routing: r.Routing, console_file: Path) -> dict[str, Channel]:
    """Every channel of a routing file, by name."""
    return {name: build(name, spec, console_file) for name, spec in routing.channels.items()}
