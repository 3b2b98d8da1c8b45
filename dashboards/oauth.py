"""Grafana's sign-in with the city's identity provider: the generic OAuth section of
`grafana.ini`, with the same role table as the API (`safecity.roles`).

Grafana 10.4 configures OAuth in its ini file, not in provisioning YAML, so this is the
one generated `config/grafana.ini` (mounted as /etc/grafana/grafana.ini; Grafana keeps
its defaults.ini for everything else; GF_SERVER_ROOT_URL must be the public URL, which
the provider redirects back to). Addresses and the client id come from Grafana's
environment (`$__env{...}`), the client secret from a secret file (`$__file{...}`), so
the same file serves every deployment. The role mapping is a JMESPath expression over
the provider's claims: the highest safecity role a person holds gives their Grafana
role; with none, `role_attribute_strict` refuses the sign-in (as the API does).
"""

from __future__ import annotations

from safecity.roles import GRAFANA_ROLES, ROLE_SCOPES, ROLES_CLAIM

SECRET_FILE = "/run/secrets/grafana_oidc_client_secret"  # noqa: S105 - a path, not a secret
# Highest first: JMESPath's `||` takes the first role that matches.
_ORDER = ("admin", "operate", "read")


def role_attribute_path(claim: str = ROLES_CLAIM, role_scopes: dict[str, str] | None = None) -> str:
    """The JMESPath expression giving a person's Grafana role from `claim` (else null;
    a token without the claim reads as no roles, not as an error)."""
    table = ROLE_SCOPES if role_scopes is None else role_scopes
    branches = [
        f"contains({claim} || `[]`, '{role}') && '{GRAFANA_ROLES[scope]}'"
        for scope in _ORDER
        for role, granted in sorted(table.items())
        if granted == scope
    ]
    # No role: null (not `false`), so Grafana sees no role at all and refuses (strict).
    return " || ".join([*branches, "`null`"])


def generic_oauth() -> dict[str, dict[str, str]]:
    """The ini sections (name -> key -> value) of Grafana's sign-in through the provider."""
    return {
        "auth": {
            # Signing out of Grafana also ends the provider's session.
            "signout_redirect_url": "$__env{SAFECITY_OIDC_LOGOUT_URL}",
            "disable_login_form": "false",
        },
        "auth.generic_oauth": {
            "enabled": "$__env{SAFECITY_GRAFANA_OIDC_ENABLED}",
            "name": "City sign-in",
            "allow_sign_up": "true",
            "auto_login": "false",
            "client_id": "$__env{SAFECITY_GRAFANA_OIDC_CLIENT_ID}",
            "client_secret": f"$__file{{{SECRET_FILE}}}",
            "scopes": "openid profile email",
            "empty_scopes": "false",
            "auth_url": "$__env{SAFECITY_OIDC_AUTH_URL}",
            "token_url": "$__env{SAFECITY_OIDC_TOKEN_URL}",
            "api_url": "$__env{SAFECITY_OIDC_USERINFO_URL}",
            "use_pkce": "true",
            "use_refresh_token": "true",
            "login_attribute_path": "preferred_username",
            "name_attribute_path": "name",
            "email_attribute_path": "email",
            "role_attribute_path": role_attribute_path(),
            "role_attribute_strict": "true",
            "allow_assign_grafana_admin": "false",
            "skip_org_role_sync": "false",
        },
    }


def grafana_ini(header: str) -> str:
    """The generated grafana.ini: `header` (as ini comments), then the sections."""
    lines = [";" + line.removeprefix("#") for line in header.splitlines()]
    for section, values in generic_oauth().items():
        lines += ["", f"[{section}]", *(f"{key} = {value}" for key, value in values.items())]
    return "\n".join(lines) + "\n"
