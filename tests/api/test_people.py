"""Reading a person from the provider's claims: roles, cities and name under the
configured claim names; whatever the claims hold, a person or a refusal with a reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.oidc import TokenError
from api.people import person_from_claims, person_id
from api.sessions import Sessions, csrf_ok
from api.settings import OidcSettings

SETTINGS = OidcSettings(issuer="https://id.city.example/realms/city")
KEYCLOAK = OidcSettings(
    issuer="https://id.city.example/realms/city",
    roles_claim="realm_access.roles",
    cities_claim="safecity.cities",
    name_claim="preferred_username",
    role_scopes={"city-duty": "operate", "city-it": "admin"},
)


def test_the_highest_role_and_the_cities_come_from_the_claims() -> None:
    person = person_from_claims(
        {
            "iss": SETTINGS.issuer,
            "sub": "u-17",
            "name": "Jane Doe",
            "roles": ["safecity-viewer", "safecity-admin", "other"],
            "cities": ["tashkent", "samarkand"],
        },
        SETTINGS,
    )
    assert person.scopes == ("read", "admin") and person.allows("operate")
    assert person.cities == ("tashkent", "samarkand")
    assert (person.subject, person.display_name) == ("u-17", "Jane Doe")
    assert person.id == person_id(SETTINGS.issuer or "", "u-17") and len(person.id) == 13


def test_claim_names_and_role_names_are_configurable() -> None:
    claims = {
        "sub": "k-1",
        "preferred_username": "duty.officer",
        "realm_access": {"roles": ["city-duty"]},
        "safecity": {"cities": "tashkent"},
    }
    person = person_from_claims(claims, KEYCLOAK)
    assert (person.scopes, person.cities, person.display_name) == (
        ("operate",),
        ("tashkent",),
        "duty.officer",
    )
    # Roles as one space- or comma-separated string (some providers' groups claim).
    assert person_from_claims({"sub": "s", "roles": "a safecity-viewer"}, SETTINGS).scopes == (
        "read",
    )


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"sub": "x", "roles": ["staff"]}, "gives no safecity role: claim 'roles' holds ['staff']"),
        ({"sub": "x"}, "gives no safecity role: claim 'roles' holds nothing"),
        ({"sub": "x", "roles": {"a": 1}}, "gives no safecity role"),
        (
            {"sub": "x", "roles": ["safecity-viewer"], "cities": ["Tash kent"]},
            "claim 'cities': city 'Tash kent': not a city id",
        ),
    ],
)
def test_claims_without_a_role_or_with_a_bad_city_are_refused(
    claims: dict[str, Any], reason: str
) -> None:
    with pytest.raises(TokenError, match=reason.replace("[", r"\[").replace("]", r"\]")) as err:
        person_from_claims(claims, SETTINGS)
    assert err.value.status == 403


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(
    roles=JSON,
    cities=JSON,
    name=JSON,
    extra=st.lists(st.sampled_from(["safecity-viewer", "safecity-operator"]), max_size=2),
)
def test_any_claims_give_a_person_or_a_reasoned_refusal(
    roles: Any, cities: Any, name: Any, extra: list[str]
) -> None:
    claims = {"sub": "s", "roles": roles, "cities": cities, "name": name}
    if extra:
        claims["roles"] = extra
    try:
        person = person_from_claims(claims, SETTINGS)
    except TokenError as exc:
        refusal: TokenError | None = exc
    else:
        refusal = None
    if refusal is not None:
        assert refusal.status == 403 and refusal.reason
        return
    assert person.scopes and set(person.scopes) <= {"read", "operate", "admin"}
    # The name goes into one-line records: never a control character, bounded.
    assert not any(ord(c) < 32 or ord(c) == 127 for c in person.display_name)
    assert len(person.display_name) <= 120


def test_sessions_end_and_check_their_csrf_token(tmp_path: Path) -> None:
    sessions = Sessions(tmp_path / "sessions.sqlite3", ttl=60)
    person = person_from_claims({"sub": "s", "roles": ["safecity-viewer"]}, SETTINGS)
    sid, session = sessions.open(person, expires_at=10**12)
    assert sessions.get(sid) == session and csrf_ok(session, session.csrf)
    assert not csrf_ok(session, None) and not csrf_ok(session, session.csrf + "x")
    # A sign-in's state is good once.
    state, _ = sessions.begin("https://console.example/auth/callback")
    assert sessions.finish(state) is not None and sessions.finish(state) is None
    # Never past the ID token's expiry.
    expired_sid, _ = sessions.open(person, expires_at=1.0)
    assert sessions.get(expired_sid) is None
    assert sessions.close(sid) == session and sessions.get(sid) is None


def test_sessions_outlive_the_process_and_keep_no_id_at_rest(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite3"
    first = Sessions(path, ttl=60)
    person = person_from_claims({"sub": "s", "roles": ["safecity-operator"]}, SETTINGS)
    sid, session = first.open(person, expires_at=10**12)
    state, pending = first.begin("https://console.example/auth/callback")
    first.close_store()
    # Another process (a restart, a replica) opens the same file: the same session.
    second = Sessions(path, ttl=60)
    assert second.get(sid) == session and second.finish(state) == pending
    # Neither the session id nor the CSRF token nor the state is in the file.
    raw = path.read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("*-wal"))
    assert sid.encode() not in raw and session.csrf.encode() not in raw
    assert state.encode() not in raw
    assert path.stat().st_mode & 0o777 == 0o600
    second.close(sid)
    assert Sessions(path, ttl=60).get(sid) is None
