"""A real OpenID Connect provider for the tests: panva's `oidc-provider` run with node.

`scripts/setup.sh --test` installs it (`npm ci` in tests/helpers/oidc/). The provider
serves discovery, JWKS, authorization (its development login form: any password),
token and logout endpoints on a free loopback port, signing with RSA keys this helper
generates, so a test can also sign a token exactly as the provider would (or with a
key the provider never published). `rotate()` restarts it on the same port with a new
signing key first in its set.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from control.stack import ManagedProcess, free_port, http_ok

PROVIDER_DIR = Path(__file__).parent / "oidc"
AUDIENCE = "safecity-api"
RESOURCE = "urn:safecity:api"
CONSOLE_CLIENT = "safecity-console"
CONSOLE_SECRET = "console-secret-for-tests-only-0123456789"
MACHINE_CLIENT = "safecity-machine"
MACHINE_SECRET = "machine-secret-for-tests-only-0123456789"


def node() -> str | None:
    """The node executable, if the provider can run here (setup.sh --test installs it)."""
    installed = (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir()
    return shutil.which("node") if installed else None


@dataclass
class SigningKey:
    """An RSA key with its id: the private half signs, the public JWK is published."""

    kid: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )

    def private_jwk(self) -> dict[str, Any]:
        """The private JWK (what the provider signs with)."""
        jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.key))
        # PyJWT marks a private JWK `key_ops: ["sign"]`; oidc-provider 8 looks up the key of
        # its JWT access tokens as one that may also verify, so the restriction goes.
        jwk.pop("key_ops", None)
        return {**jwk, "kid": self.kid, "alg": "RS256", "use": "sig"}

    def sign(self, claims: dict[str, Any]) -> str:
        """A token of these claims signed with this key (RS256, kid in the header)."""
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})


@dataclass
class OidcProvider:
    """A running provider: its issuer, keys and accounts; `stop()` ends it."""

    work: Path
    accounts: dict[str, dict[str, Any]]
    redirect_uris: list[str]
    port: int = field(default_factory=free_port)
    keys: list[SigningKey] = field(default_factory=lambda: [SigningKey()])
    process: ManagedProcess | None = None
    starts: int = 0

    @property
    def issuer(self) -> str:
        """The issuer URL (the provider's own base URL)."""
        return f"http://127.0.0.1:{self.port}"

    def _config(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "port": self.port,
            "audience": AUDIENCE,
            "resource": RESOURCE,
            "jwks": {"keys": [k.private_jwk() for k in self.keys]},
            "accounts": self.accounts,
            "clients": [
                {
                    "client_id": CONSOLE_CLIENT,
                    "client_secret": CONSOLE_SECRET,
                    "redirect_uris": self.redirect_uris,
                    "post_logout_redirect_uris": [
                        u.split("/auth/")[0] + "/" for u in self.redirect_uris
                    ],
                    "grant_types": ["authorization_code"],
                    "response_types": ["code"],
                },
                {
                    "client_id": MACHINE_CLIENT,
                    "client_secret": MACHINE_SECRET,
                    "grant_types": ["client_credentials"],
                    "redirect_uris": [],
                    "response_types": [],
                },
            ],
            "machine_claims": {MACHINE_CLIENT: {"roles": ["safecity-operator"], "name": "robot"}},
        }

    def start(self) -> OidcProvider:
        """Start node with the current configuration; return once discovery answers."""
        config = self.work / f"oidc-{self.starts}.json"
        config.write_text(json.dumps(self._config()), encoding="utf-8")
        executable = node()
        if executable is None:
            raise RuntimeError("node or oidc-provider missing: run scripts/setup.sh --test")
        self.process = ManagedProcess(
            "oidc-provider",
            [executable, str(PROVIDER_DIR / "provider.js"), str(config)],
            self.work / f"oidc-{self.starts}.log",
        )
        self.starts += 1
        self.process.start()
        self.process.wait_ready(
            http_ok(f"{self.issuer}/.well-known/openid-configuration"), timeout=30
        )
        return self

    def stop(self) -> None:
        """Stop the provider."""
        if self.process is not None:
            self.process.stop(timeout=10)
            self.process = None

    def rotate(self) -> SigningKey:
        """Restart with a new signing key first (the old one still published); return it."""
        new = SigningKey()
        self.keys = [new, *self.keys]
        self.stop()
        self.start()
        return new

    def claims(self, subject: str, **extra: Any) -> dict[str, Any]:
        """Claims of an access token for the API, valid for five minutes from now."""
        now = int(time.time())
        base = {"iss": self.issuer, "aud": AUDIENCE, "sub": subject, "iat": now, "exp": now + 300}
        return {**base, **self.accounts.get(subject, {}), **extra}

    def machine_token(self) -> str:
        """An access token (JWT) the provider itself issues to the machine client."""
        response = httpx.post(
            f"{self.issuer}/token",
            data={"grant_type": "client_credentials", "scope": "api", "resource": RESOURCE},
            auth=(MACHINE_CLIENT, MACHINE_SECRET),
            timeout=10,
        )
        response.raise_for_status()
        token: str = response.json()["access_token"]
        return token
