"""People with the city's identity provider's tokens: accepted beside API keys, refused
with a reason, limited to their cities, named in the record.

A real OpenID Connect provider (panva's oidc-provider under node, `oidcprovider`)
serves discovery and JWKS on a free loopback port; the API fetches both from it. The
tokens are the provider's own (client credentials) or signed here with the very key
the provider publishes (a person's claims), or with a key it never published.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from api_seed import panic_incident
from fastapi.testclient import TestClient
from oidcprovider import AUDIENCE, CONSOLE_CLIENT, OidcProvider, SigningKey

from api.apikeys import KeyStore
from api.app import create_app
from api.oidc import REFETCH_GAP, TokenError
from api.oidc import OidcProvider as OidcVerifier
from api.people import person_id
from api.settings import ApiSettings, OidcSettings
from safecity import incidents as inc
from safecity.citygen import builtin_cities
from safecity.influx import InfluxClient
from safecity.registry import Cities

ACCOUNTS = {
    "ops-tashkent": {
        "name": "Dilnoza Karimova",
        "roles": ["safecity-operator"],
        "cities": ["tashkent"],
    },
    "viewer-anywhere": {"name": "Aziz Viewer", "roles": ["safecity-viewer"]},
    "no-role": {"name": "Nobody Special", "roles": ["library-staff"]},
}


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    """The local provider, running for the module."""
    work = tmp_path_factory.mktemp("oidc")
    running = OidcProvider(work, ACCOUNTS, ["http://127.0.0.1:9/auth/callback"]).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def cities() -> Cities:
    """Tashkent and Samarkand: a person limited to one must not see the other."""
    return builtin_cities(["tashkent", "samarkand"])


@pytest.fixture(scope="module")
def oidc_settings(api_settings: ApiSettings, provider: OidcProvider) -> ApiSettings:
    """The module's API settings with the provider as the identity provider."""
    oidc = OidcSettings(issuer=provider.issuer, audience=AUDIENCE, leeway=60)
    return api_settings.model_copy(update={"oidc": oidc})


@pytest.fixture(scope="module")
def incident(oidc_settings: ApiSettings, cities: Cities) -> inc.Incident:
    """An open incident in Tashkent's own database."""
    opened = panic_incident(minutes_ago=2)

    async def seed() -> None:
        settings = oidc_settings.influx.for_city("tashkent", cities.ids)
        client = InfluxClient(settings)
        try:
            await client.ensure_database()
            await inc.IncidentStore(client).open(opened)
        finally:
            await client.close()

    asyncio.run(seed())
    return opened


@pytest.fixture(scope="module")
def api(oidc_settings: ApiSettings, cities: Cities) -> Iterator[TestClient]:
    """The app (lifespan run), no credentials by default."""
    with TestClient(create_app(oidc_settings, cities=cities), raise_server_exceptions=False) as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    """The Authorization header of a bearer token."""
    return {"Authorization": f"Bearer {token}"}


def person_token(provider: OidcProvider, subject: str, **extra: Any) -> str:
    """An access token for `subject`, signed with the provider's published key."""
    return provider.keys[0].sign(provider.claims(subject, **extra))


def test_a_token_the_provider_issued_is_accepted(api: TestClient, provider: OidcProvider) -> None:
    token = provider.machine_token()
    me = api.get("/v1/me", headers=bearer(token))
    assert me.status_code == 200, me.text
    body = me.json()
    assert body["scopes"] == ["operate"]
    assert body["subject"] == "safecity-machine"
    assert body["id"] == person_id(provider.issuer, "safecity-machine")


def test_a_person_acts_and_the_record_names_them(
    api: TestClient, provider: OidcProvider, incident: inc.Incident, oidc_settings: ApiSettings
) -> None:
    token = person_token(provider, "ops-tashkent")
    acked = api.post(
        f"/v1/incidents/{incident.id}/ack", headers=bearer(token), json={"note": "on my way"}
    )
    assert acked.status_code == 200, acked.text
    step = acked.json()["transitions"][-1]
    assert step["state"] == "acknowledged"
    assert (step["by_subject"], step["by_name"]) == ("ops-tashkent", "Dilnoza Karimova")
    assert step["by"] == person_id(provider.issuer, "ops-tashkent")
    # Read back from the database: the incident log names the person.
    again = api.get(f"/v1/incidents/{incident.id}", headers=bearer(token)).json()
    assert [(t["state"], t["by_name"]) for t in again["transitions"]] == [
        ("open", ""),
        ("acknowledged", "Dilnoza Karimova"),
    ]
    lines = oidc_settings.audit_log_file.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[-1])
    assert record["route"] == "/v1/incidents/{incident_id}/ack"
    assert (record["subject"], record["person"], record["status"]) == (
        "ops-tashkent",
        "Dilnoza Karimova",
        200,
    )


def test_a_viewer_may_read_but_not_operate(
    api: TestClient, provider: OidcProvider, incident: inc.Incident
) -> None:
    token = person_token(provider, "viewer-anywhere")
    assert api.get("/v1/incidents", headers=bearer(token)).status_code == 200
    refused = api.post(f"/v1/incidents/{incident.id}/resolve", headers=bearer(token))
    assert refused.status_code == 403
    assert refused.json()["detail"] == ("Aziz Viewer (viewer-anywhere; read) lacks scope 'operate'")


def _now() -> int:
    return int(time.time())


# Times are seconds from the moment the test signs the token (claims built at collection
# would age with a long suite: a token "issued in the future" was not, 15 minutes in).
REFUSALS: list[tuple[str, dict[str, Any], int, str]] = [
    ("expired", {"iat": -900, "exp": -300}, 401, "token expired"),
    ("wrong audience", {"aud": "someone-else"}, 401, "token audience is not 'safecity-api'"),
    ("wrong issuer", {"iss": "https://evil.example"}, 401, "token issuer is not"),
    ("issued in the future", {"iat": 900}, 401, "token not valid yet"),
    ("no sub", {"sub": None}, 401, 'Token is missing the "sub" claim'),
]
_TIMES = ("iat", "exp")


@pytest.mark.parametrize(
    ("case", "change", "status", "reason"), REFUSALS, ids=[r[0] for r in REFUSALS]
)
def test_a_bad_token_is_refused_with_its_reason(
    api: TestClient,
    provider: OidcProvider,
    case: str,
    change: dict[str, Any],
    status: int,
    reason: str,
) -> None:
    now = {k: _now() + v for k, v in change.items() if k in _TIMES}
    claims = provider.claims("ops-tashkent", **{**change, **now})
    claims = {k: v for k, v in claims.items() if v is not None}
    refused = api.get("/v1/me", headers=bearer(provider.keys[0].sign(claims)))
    assert refused.status_code == status, case
    assert reason in refused.json()["detail"]
    assert refused.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_clock_skew_within_the_leeway_is_tolerated(api: TestClient, provider: OidcProvider) -> None:
    # Issued 30 s "in the future" and expired 30 s ago: within 60 s of skew both ways.
    token = person_token(provider, "viewer-anywhere", iat=_now() + 30)
    assert api.get("/v1/me", headers=bearer(token)).status_code == 200
    token = person_token(provider, "viewer-anywhere", iat=_now() - 400, exp=_now() - 30)
    assert api.get("/v1/me", headers=bearer(token)).status_code == 200


def test_a_token_of_an_unknown_key_is_refused(api: TestClient, provider: OidcProvider) -> None:
    stranger = SigningKey()
    refused = api.get("/v1/me", headers=bearer(stranger.sign(provider.claims("ops-tashkent"))))
    assert refused.status_code == 401
    assert refused.json()["detail"] == (
        f"token signed by an unknown key (kid {stranger.kid!r} is not in the provider's key set)"
    )


def test_no_role_in_the_claims_is_forbidden(api: TestClient, provider: OidcProvider) -> None:
    refused = api.get("/v1/me", headers=bearer(person_token(provider, "no-role")))
    assert refused.status_code == 403
    detail = refused.json()["detail"]
    assert detail.startswith("the token of 'no-role' gives no safecity role: claim 'roles'")
    assert "library-staff" in detail


@pytest.mark.parametrize("token", ["not-a-token", "a.b.c"])
def test_garbage_is_refused(api: TestClient, token: str) -> None:
    refused = api.get("/v1/me", headers=bearer(token))
    assert refused.status_code == 401
    assert refused.json()["detail"].startswith("not a signed token")


def test_a_symmetric_token_is_refused(api: TestClient, provider: OidcProvider) -> None:
    import jwt

    token = jwt.encode(
        provider.claims("ops-tashkent"), "x" * 32, algorithm="HS256", headers={"kid": "k"}
    )
    refused = api.get("/v1/me", headers=bearer(token))
    assert refused.status_code == 401
    assert refused.json()["detail"].startswith("token algorithm 'HS256' not accepted")


def test_a_person_limited_to_one_city_gets_a_keys_404_for_another(
    api: TestClient, provider: OidcProvider, oidc_settings: ApiSettings
) -> None:
    _, key = KeyStore(oidc_settings.api_keys_file).create("tashkent only", ("read",), ("tashkent",))
    token = person_token(provider, "ops-tashkent")
    for path in ("/v1/cities/samarkand", "/v1/devices?city=samarkand"):
        as_person = api.get(path, headers=bearer(token))
        as_key = api.get(path, headers={"X-API-Key": key})
        assert as_person.status_code == as_key.status_code == 404
        assert as_person.json() == as_key.json()
    assert api.get("/v1/cities/tashkent", headers=bearer(token)).status_code == 200
    # Without a cities claim a person sees every city, as a key without --city.
    everywhere = person_token(provider, "viewer-anywhere")
    assert api.get("/v1/cities/samarkand", headers=bearer(everywhere)).status_code == 200


def test_api_keys_still_work_beside_tokens(api: TestClient, keys: dict[str, str]) -> None:
    assert api.get("/v1/me", headers={"X-API-Key": keys["read"]}).status_code == 200
    # An API key sent as a bearer token is still a key, not a token to verify.
    assert api.get("/v1/me", headers=bearer(keys["read"])).status_code == 200


def test_the_provider_rotates_its_keys(api: TestClient, provider: OidcProvider) -> None:
    # The API holds the old key set; a token of the new key makes it refetch once.
    assert api.get("/v1/me", headers=bearer(person_token(provider, "viewer-anywhere"))).is_success
    # A refetch at most once a second: the one an earlier test's forged key caused must
    # not be the last before the rotation (the limit has a test of its own, below).
    time.sleep(REFETCH_GAP)
    new = provider.rotate()
    token = new.sign(provider.claims("viewer-anywhere"))
    accepted = api.get("/v1/me", headers=bearer(token))
    assert accepted.status_code == 200, accepted.text
    # The old key is still published for the tokens it signed.
    old = provider.keys[1].sign(provider.claims("viewer-anywhere"))
    assert api.get("/v1/me", headers=bearer(old)).status_code == 200


def test_without_a_provider_a_token_is_an_unknown_key(client: TestClient) -> None:
    # The module's plain client (no identity provider), without its default key.
    refused = client.get("/v1/me", headers={"X-API-Key": "", **bearer("a.b.c")})
    assert refused.status_code == 401
    assert refused.json()["detail"] == (
        "unknown or revoked API key (this API accepts no sign-in tokens)"
    )


def test_console_sign_in_uses_pkce_and_only_the_starting_browser_may_finish(
    oidc_settings: ApiSettings, cities: Cities, provider: OidcProvider
) -> None:
    oidc = oidc_settings.oidc.model_copy(update={"client_id": CONSOLE_CLIENT})
    app = create_app(oidc_settings.model_copy(update={"oidc": oidc}), cities=cities)
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as browser:
        started = browser.get("/auth/login")
        assert started.status_code == 302
        target = httpx.URL(started.headers["location"])
        assert str(target).startswith(f"{provider.issuer}/auth?")
        query = target.params
        assert (query["response_type"], query["client_id"]) == ("code", CONSOLE_CLIENT)
        assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
        assert query["redirect_uri"] == "https://testserver/auth/callback"
        assert query["state"] and query["nonce"]
        cookie = started.headers["set-cookie"]
        assert cookie.startswith(f"safecity_signin={query['state']};")
        assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=lax" in cookie
        # The same state from a browser without the sign-in cookie: refused.
        browser.cookies.clear()
        stolen = browser.get("/auth/callback", params={"state": query["state"], "code": "x"})
        assert stolen.status_code == 400
        assert stolen.json()["detail"] == "unknown or expired sign-in: start again"
        assert browser.get("/auth/session").json()["signed_in"] is False


def test_a_command_a_person_sends_names_them(
    api: TestClient, provider: OidcProvider, cities: Cities
) -> None:
    light = next(d for d in cities["tashkent"].devices if d.kind == "streetlight")
    token = person_token(provider, "ops-tashkent")
    sent = api.post(
        f"/v1/devices/{light.id}/commands",
        headers=bearer(token),
        json={"name": "set_level", "params": {"level": 40}},
    )
    assert sent.status_code == 202, sent.text
    command = sent.json()
    assert (command["by_subject"], command["by_name"]) == ("ops-tashkent", "Dilnoza Karimova")
    # Stored so: the listing reads it back from the command store.
    listed = api.get(f"/v1/commands/{command['id']}", headers=bearer(token)).json()
    assert (listed["by"], listed["by_subject"], listed["by_name"]) == (
        person_id(provider.issuer, "ops-tashkent"),
        "ops-tashkent",
        "Dilnoza Karimova",
    )


def test_forged_key_ids_refetch_the_keys_at_most_once_a_second(provider: OidcProvider) -> None:
    fetched: list[str] = []

    async def count(request: httpx.Request) -> None:
        fetched.append(request.url.path)

    async def forge(times: int) -> list[str]:
        client = httpx.AsyncClient(timeout=5, event_hooks={"request": [count]})
        verifier = OidcVerifier(OidcSettings(issuer=provider.issuer), client)
        reasons = []
        forger = SigningKey()
        try:
            for n in range(times):
                forged = SigningKey(kid=f"forged-{n}", key=forger.key)
                token = forged.sign(provider.claims("ops-tashkent"))
                with pytest.raises(TokenError) as refused:
                    await verifier.verify(token, AUDIENCE)
                reasons.append(refused.value.reason)
        finally:
            await verifier.close()
        return reasons

    started = time.monotonic()
    reasons = asyncio.run(forge(50))
    elapsed = time.monotonic() - started
    assert len(reasons) == 50
    assert all(r.startswith("token signed by an unknown key") for r in reasons)
    jwks = [p for p in fetched if not p.endswith("openid-configuration")]
    # The first look-up, then at most one refetch per second of the burst.
    assert 1 <= len(jwks) <= 2 + int(elapsed / REFETCH_GAP) < 50, (fetched, elapsed)
