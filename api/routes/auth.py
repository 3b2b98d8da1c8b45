"""Console sign-in with the city's identity provider: authorization code with PKCE.

`/auth/login` sends the browser to the provider with a fresh `state` (also in a short-lived
cookie, so only the browser that started a sign-in can finish it), `nonce` and PKCE
challenge (S256); `/auth/callback` exchanges the code (with the verifier) for tokens,
verifies the ID token (signature, issuer, audience = our client id, nonce, expiry),
maps its claims to a person and opens a server-side session: the browser gets only
its random id, in a Secure, HttpOnly, SameSite=Lax cookie. `/auth/session` tells the
console who is signed in and the session's CSRF token; `/auth/logout` (CSRF token
required) ends the session and names the provider's logout page.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from typing import Annotated, Any
from urllib.parse import urlencode

import httpx
from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, Field

from api.oidc import OidcProvider, ProviderError, TokenError
from api.people import CSRF_HEADER, SESSION_COOKIE, person_from_claims
from api.sessions import PENDING_TTL, PendingSignIn, Sessions, csrf_ok
from api.settings import OidcSettings

log = logging.getLogger("safecity.api.auth")

router = APIRouter(prefix="/auth", tags=["auth"])
CALLBACK = "/auth/callback"
SIGN_IN_COOKIE = "safecity_signin"


class SessionOut(BaseModel):
    """Who is signed in to this console (if anyone), and whether sign-in is offered."""

    sign_in: bool = Field(description="the console may sign in with the identity provider")
    signed_in: bool
    subject: str | None = Field(default=None, description="the provider's `sub` of the person")
    name: str | None = None
    scopes: list[str] = []
    cities: list[str] = Field(default=[], description="empty: every city")
    csrf_token: str | None = Field(
        default=None, description=f"send it in {CSRF_HEADER} on every state-changing call"
    )


class LogoutOut(BaseModel):
    """The session is over; `logout_url` ends the provider's own session too (if it has one)."""

    logout_url: str | None


def _console_provider(request: Request) -> tuple[OidcProvider, OidcSettings]:
    provider: OidcProvider | None = request.app.state.oidc
    if provider is None or not provider.settings.client_id:
        raise HTTPException(status_code=404, detail="sign-in is not configured on this API")
    return provider, provider.settings


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _redirect_uri(request: Request, settings: OidcSettings) -> str:
    base = settings.public_url or str(request.base_url)
    return base.rstrip("/") + CALLBACK


async def _endpoint(provider: OidcProvider, name: str) -> str:
    try:
        url = (await provider.metadata()).get(name)
    except ProviderError as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from None
    if not isinstance(url, str):
        raise HTTPException(status_code=503, detail=f"OIDC provider has no {name}")
    return url


# The browser's navigations (redirects to and from the provider), not API calls: kept out
# of the OpenAPI document as the console's own pages are.
@router.get("/login", status_code=302, response_class=RedirectResponse, include_in_schema=False)
async def sign_in(request: Request) -> RedirectResponse:
    """Go to the identity provider to sign in (authorization code with PKCE)."""
    provider, settings = _console_provider(request)
    sessions: Sessions = request.app.state.sessions
    state, pending = sessions.begin(_redirect_uri(request, settings))
    query = {
        "response_type": "code",
        "client_id": settings.client_id,
        "redirect_uri": pending.redirect_uri,
        "scope": settings.scopes,
        "state": state,
        "nonce": pending.nonce,
        "code_challenge": _challenge(pending.verifier),
        "code_challenge_method": "S256",
    }
    target = await _endpoint(provider, "authorization_endpoint")
    response = RedirectResponse(f"{target}?{urlencode(query)}", status_code=302)
    # The sign-in belongs to this browser: the callback must come back with this cookie
    # (else someone else's sign-in could be completed in it).
    response.set_cookie(
        SIGN_IN_COOKIE,
        state,
        max_age=int(PENDING_TTL),
        path="/auth/",
        secure=True,
        httponly=True,
        samesite="lax",
    )
    return response


async def _exchange(
    provider: OidcProvider, settings: OidcSettings, code: str, pending: PendingSignIn
) -> dict[str, Any]:
    url = await _endpoint(provider, "token_endpoint")
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": pending.redirect_uri,
        "code_verifier": pending.verifier,
        "client_id": settings.client_id or "",
    }
    secret = settings.client_secret.get_secret_value() if settings.client_secret else None
    # A confidential client authenticates (client_secret_basic); a public one has PKCE only.
    auth = httpx.BasicAuth(settings.client_id or "", secret) if secret else httpx.USE_CLIENT_DEFAULT
    try:
        response = await provider.client.post(url, data=form, auth=auth)
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise HTTPException(status_code=503, detail=f"OIDC token endpoint: {exc}") from None
    if response.status_code != 200 or not isinstance(body, dict):
        reason = (
            body.get("error_description") or body.get("error") if isinstance(body, dict) else ""
        )
        raise HTTPException(status_code=401, detail=f"sign-in refused by the provider: {reason}")
    return body


@router.get("/callback", status_code=302, response_class=RedirectResponse, include_in_schema=False)
async def sign_in_callback(
    request: Request,
    state: Annotated[str, Query(max_length=200)] = "",
    code: Annotated[str, Query(max_length=4096)] = "",
    error: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    """Where the provider sends the browser back: open the session, go to the console."""
    provider, settings = _console_provider(request)
    sessions: Sessions = request.app.state.sessions
    if error:
        raise HTTPException(status_code=401, detail=f"sign-in refused by the provider: {error}")
    mine = hmac.compare_digest(request.cookies.get(SIGN_IN_COOKIE, ""), state)
    pending = sessions.finish(state) if mine else None
    if pending is None or not code:
        raise HTTPException(status_code=400, detail="unknown or expired sign-in: start again")
    tokens = await _exchange(provider, settings, code, pending)
    id_token = str(tokens.get("id_token", ""))
    try:
        claims = await provider.verify(id_token, settings.client_id or "", nonce=pending.nonce)
        person = person_from_claims(claims, settings)
    except TokenError as exc:
        raise HTTPException(status_code=exc.status, detail=exc.reason) from None
    except ProviderError as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from None
    sid, session = sessions.open(person, float(claims["exp"]))
    log.info("signed in", extra={"subject": person.subject, "person": person.display_name})
    response = RedirectResponse("/", status_code=302)
    response.set_cookie(
        SESSION_COOKIE,
        sid,
        max_age=max(1, int(session.expires - time.time())),
        path="/",
        secure=True,
        httponly=True,
        samesite="lax",
    )
    response.delete_cookie(SIGN_IN_COOKIE, path="/auth/", secure=True, httponly=True)
    return response


@router.get("/session", response_model=SessionOut)
async def console_session(request: Request) -> SessionOut:
    """Who is signed in to this console, and its CSRF token (no session: `signed_in` false)."""
    provider: OidcProvider | None = request.app.state.oidc
    offered = provider is not None and bool(provider.settings.client_id)
    sessions: Sessions = request.app.state.sessions
    session = sessions.get(request.cookies.get(SESSION_COOKIE))
    if session is None:
        return SessionOut(sign_in=offered, signed_in=False)
    person = session.person
    return SessionOut(
        sign_in=offered,
        signed_in=True,
        subject=person.subject,
        name=person.display_name,
        scopes=list(person.scopes),
        cities=list(person.cities),
        csrf_token=session.csrf,
    )


@router.post("/logout", response_model=LogoutOut, responses={403: {"description": "no CSRF"}})
async def sign_out(
    request: Request,
    csrf: Annotated[str | None, Header(alias=CSRF_HEADER)] = None,
) -> Response:
    """End this console's session (needs its CSRF token); `logout_url` ends the provider's."""
    sessions: Sessions = request.app.state.sessions
    sid = request.cookies.get(SESSION_COOKIE)
    session = sessions.get(sid)
    if session is not None and not csrf_ok(session, csrf):
        raise HTTPException(
            status_code=403,
            detail=f"missing or wrong CSRF token: send the session's token in {CSRF_HEADER}",
        )
    sessions.close(sid)
    logout_url = None
    provider: OidcProvider | None = request.app.state.oidc
    if session is not None and provider is not None:
        end = (await provider.metadata()).get("end_session_endpoint")
        if isinstance(end, str):
            back = (provider.settings.public_url or str(request.base_url)).rstrip("/") + "/"
            # RP-initiated logout by client id (the provider checks the return address
            # against the client's registered ones).
            hint = {
                "client_id": provider.settings.client_id,
                "post_logout_redirect_uri": back,
            }
            logout_url = f"{end}?{urlencode(hint)}"
        log.info("signed out", extra={"subject": session.person.subject})
    response = Response(
        LogoutOut(logout_url=logout_url).model_dump_json(), media_type="application/json"
    )
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="lax")
    return response
