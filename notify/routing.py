"""Routing files: one YAML per city — channels, people, rosters, escalation policies, routes.

Validated on load (pydantic, then the cross-references) with the file and line of every
problem; `safecity notify --check` runs exactly this. The shipped `routing/default.yaml`
serves any city without its own file (a duty officer on the local channel, always on).
"""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from safecity.catalogue import Severity
from safecity.errors import RoutingError
from safecity.yamlfile import compose, line_of, validate

ROUTING_DIR = Path(__file__).resolve().parent / "routing"
_ID = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FROZEN = ConfigDict(frozen=True, extra="forbid")


def _seconds(value: Any) -> Any:
    """Accept '90s', '15m', '2h', '1d' or a bare number of seconds."""
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"bad duration {value!r} (use e.g. 90s, 15m, 2h)")
        return float(match.group(1)) * _UNIT_S[match.group(2)]
    return value


def _clock(value: Any) -> Any:
    """Accept 'HH:MM' (YAML may also give minutes since midnight for 08:00 -> sexagesimal)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return time(value // 60 % 24, value % 60)
    if isinstance(value, str):
        try:
            return time.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"bad time of day {value!r} (use HH:MM)") from None
    return value


Duration = Annotated[float, BeforeValidator(_seconds), Field(ge=0, le=30 * 86_400)]
Clock = Annotated[time, BeforeValidator(_clock)]
Identifier = Annotated[str, Field(pattern=_ID)]


class _Channel(BaseModel):
    model_config = _FROZEN

    rate_per_s: Annotated[float, Field(gt=0, le=10_000)] = 30.0
    """Sends per second on this channel at most (Telegram: 30/s per bot)."""
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0


class LocalChannel(_Channel):
    """The console and a log in the instance: needs nothing outside."""

    type: Literal["local"]


class WebhookChannel(_Channel):
    """JSON POST, signed (HMAC-SHA256 over timestamp.body), with an idempotency key."""

    type: Literal["webhook"]
    url: Annotated[str, Field(pattern=r"^https?://")]
    secret_file: Path


class SmtpChannel(_Channel):
    """E-mail over SMTP: STARTTLS and login unless turned off; one connection reused."""

    type: Literal["smtp"]
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 587
    starttls: bool = True
    username: str | None = None
    password_file: Path | None = None
    sender: Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$")]
    ca_file: Path | None = None


class TelegramChannel(_Channel):
    """Telegram Bot API `sendMessage` (base URL configurable; the token from a file)."""

    type: Literal["telegram"]
    base_url: Annotated[str, Field(pattern=r"^https?://")] = "https://api.telegram.org"
    token_file: Path


class SmsChannel(_Channel):
    """SMS through an HTTP gateway: a JSON body template ({to}, {text}), bearer token file."""

    type: Literal["sms"]
    url: Annotated[str, Field(pattern=r"^https?://")]
    token_file: Path | None = None
    template: dict[str, str] = Field(default_factory=lambda: {"to": "{to}", "text": "{text}"})


AnyChannel = Annotated[
    LocalChannel | WebhookChannel | SmtpChannel | TelegramChannel | SmsChannel,
    Field(discriminator="type"),
]


class Person(BaseModel):
    """Someone on a roster: per channel (a name under `channels`) the address they carry."""

    model_config = _FROZEN

    id: Identifier
    name: Annotated[str, Field(min_length=1, max_length=100)]
    contacts: dict[str, Annotated[str, Field(min_length=1, max_length=200)]]


class Shift(BaseModel):
    """Who is on call on these days between start and end (city time; end <= start crosses
    midnight and belongs to the day it starts)."""

    model_config = _FROZEN

    days: tuple[Day, ...] = DAYS
    start: Clock = time(0, 0)
    end: Clock = time(0, 0)
    people: Annotated[tuple[Identifier, ...], Field(min_length=1)]

    def covers(self, local: datetime) -> bool:
        """True when `local` (the city's wall time) falls in this shift."""
        now, day = local.time(), DAYS[local.weekday()]
        if self.start < self.end:
            return day in self.days and self.start <= now < self.end
        yesterday = DAYS[(local.weekday() - 1) % 7]
        return (day in self.days and now >= self.start) or (
            yesterday in self.days and now < self.end
        )


class Roster(BaseModel):
    """A duty roster: its shifts."""

    model_config = _FROZEN

    id: Identifier
    shifts: Annotated[tuple[Shift, ...], Field(min_length=1)]

    def on_call(self, local: datetime) -> tuple[str, ...]:
        """The people on call at `local` (city time), each once, in roster order."""
        out: dict[str, None] = {}
        for shift in self.shifts:
            if shift.covers(local):
                out.update(dict.fromkeys(shift.people))
        return tuple(out)


class Tier(BaseModel):
    """One escalation step: `after` the opening, page a roster's on-call and/or people,
    then again every `repeat_every`, `repeats` times, while nobody acknowledged."""

    model_config = _FROZEN

    after: Duration = 0.0
    roster: Identifier | None = None
    people: tuple[Identifier, ...] = ()
    repeat_every: Duration = 300.0
    repeats: Annotated[int, Field(ge=0, le=20)] = 0


class Policy(BaseModel):
    """An escalation policy: its tiers, in order."""

    model_config = _FROZEN

    id: Identifier
    tiers: Annotated[tuple[Tier, ...], Field(min_length=1)]


class Match(BaseModel):
    """What a route matches; an empty list matches anything."""

    model_config = _FROZEN

    districts: tuple[Identifier, ...] = ()
    severities: tuple[Severity, ...] = ()
    rules: tuple[Identifier, ...] = ()

    def matches(self, district: str, severity: Severity, rule_id: str) -> bool:
        """True when an incident with these properties is matched."""
        return (
            (not self.districts or district in self.districts)
            and (not self.severities or severity in self.severities)
            and (not self.rules or rule_id in self.rules)
        )


class Route(BaseModel):
    """Incidents that match go to `policy` (the first matching route wins)."""

    model_config = _FROZEN

    match: Match = Match()
    policy: Identifier


class QuietHours(BaseModel):
    """Pages of these severities wait for the end of the window (city time)."""

    model_config = _FROZEN

    start: Clock
    end: Clock
    severities: tuple[Severity, ...] = (Severity.LOW,)


class Routing(BaseModel):
    """A city's routing file."""

    model_config = _FROZEN

    city: Identifier
    timezone: str
    ack_ttl: Duration = 86_400.0
    digest_max: Annotated[int, Field(ge=1, le=500)] = 50
    """At most this many pending pages to one address go out as one digest message."""
    channels: dict[Identifier, AnyChannel]
    people: tuple[Person, ...]
    rosters: tuple[Roster, ...] = ()
    policies: Annotated[tuple[Policy, ...], Field(min_length=1)]
    routes: Annotated[tuple[Route, ...], Field(min_length=1)]
    quiet_hours: QuietHours | None = None

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from None
        return value

    @property
    def zone(self) -> ZoneInfo:
        """The city's time zone."""
        return ZoneInfo(self.timezone)

    def person(self, ident: str) -> Person:
        """The person with this id (KeyError if none)."""
        return next(p for p in self.people if p.id == ident)

    def roster(self, ident: str) -> Roster:
        """The roster with this id (StopIteration if none; the loader checked)."""
        return next(r for r in self.rosters if r.id == ident)

    def policy(self, ident: str) -> Policy:
        """The policy with this id."""
        return next(p for p in self.policies if p.id == ident)

    def route(self, district: str, severity: Severity, rule_id: str) -> Route | None:
        """The first route matching an incident, or None (nobody is paged)."""
        return next((r for r in self.routes if r.match.matches(district, severity, rule_id)), None)

    def quiet_until(self, severity: Severity, at: datetime) -> datetime:
        """`at`, or the end of the quiet hours when a page of `severity` falls inside them."""
        quiet = self.quiet_hours
        if quiet is None or severity not in quiet.severities:
            return at
        local = at.astimezone(self.zone)
        probe = Shift(start=quiet.start, end=quiet.end, people=("x",))
        if not probe.covers(local):
            return at
        end = local.replace(hour=quiet.end.hour, minute=quiet.end.minute, second=0, microsecond=0)
        if end <= local:
            end += timedelta(days=1)
        return end


Problem = tuple[tuple[int | str, ...], str]
"""A dangling name: where it stands (the path into the file), and what is wrong."""


def _contact_references(routing: Routing) -> list[Problem]:
    """Contacts on channels the file does not define."""
    known = ", ".join(sorted(routing.channels))
    return [
        (("people", i, "contacts", name), f"unknown channel {name!r} ({known})")
        for i, person in enumerate(routing.people)
        for name in person.contacts
        if name not in routing.channels
    ]


def _roster_references(routing: Routing) -> list[Problem]:
    """Shifts naming people the file does not define."""
    people = {p.id for p in routing.people}
    return [
        (("rosters", i, "shifts", j, "people"), f"unknown person {who!r}")
        for i, roster in enumerate(routing.rosters)
        for j, shift in enumerate(roster.shifts)
        for who in shift.people
        if who not in people
    ]


def _policy_references(routing: Routing) -> list[Problem]:
    """Tiers naming unknown rosters or people, or paging nobody."""
    people = {p.id for p in routing.people}
    rosters = {r.id for r in routing.rosters}
    out: list[Problem] = []
    for i, policy in enumerate(routing.policies):
        for j, tier in enumerate(policy.tiers):
            where: tuple[int | str, ...] = ("policies", i, "tiers", j)
            if tier.roster is not None and tier.roster not in rosters:
                out.append(((*where, "roster"), f"unknown roster {tier.roster!r}"))
            out += [
                ((*where, "people"), f"unknown person {w!r}")
                for w in tier.people
                if w not in people
            ]
            if tier.roster is None and not tier.people:
                out.append((where, "a tier pages a roster or people (none given)"))
    return out


def _references(routing: Routing) -> list[Problem]:
    """Every dangling name in the file: (location, problem), in the file's order."""
    policies = {p.id for p in routing.policies}
    routes = [
        (("routes", i, "policy"), f"unknown policy {route.policy!r}")
        for i, route in enumerate(routing.routes)
        if route.policy not in policies
    ]
    return (
        _contact_references(routing)
        + _roster_references(routing)
        + _policy_references(routing)
        + routes
    )


def loads(text: str, source: str = "<string>") -> Routing:
    """Parse and validate a routing file's text; RoutingError names the line of any problem."""
    routing = validate(Routing, text, source, RoutingError)
    problems = _references(routing)
    if problems:
        root, _ = compose(text, source, RoutingError)
        raise RoutingError(
            "; ".join(f"{source}:{line_of(root, loc)}: {msg}" for loc, msg in problems)
        )
    return routing


def load(path: Path) -> Routing:
    """Load a routing file by path (RoutingError naming it when it cannot be read)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RoutingError(f"cannot read routing file {path}: {exc.strerror or exc}") from None
    return loads(text, str(path))


def load_for(city: str, timezone: str, path: Path | None = None) -> Routing:
    """A city's routing: the given file (must name the city), else the shipped default."""
    if path is not None:
        routing = load(path)
        if routing.city != city:
            raise RoutingError(f"{path}: routing is for city {routing.city!r}, not {city!r}")
        return routing
    shipped = ROUTING_DIR / f"{city}.yaml"
    routing = load(shipped if shipped.is_file() else ROUTING_DIR / "default.yaml")
    return routing.model_copy(update={"city": city, "timezone": timezone})
