"""Grafana's sign-in through the city's identity provider, as far as it can be checked
without a Grafana server: the generated ini parses, uses only keys Grafana 10.4 knows,
points at the provider only through its environment and a secret file, and its role
mapping gives, evaluated with JMESPath as Grafana does, the role the API gives.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path
from typing import Any

import jmespath
import pytest

from api.people import person_from_claims
from api.settings import OidcSettings
from dashboards import build
from dashboards.oauth import role_attribute_path
from safecity.roles import GRAFANA_ROLES, ROLE_SCOPES

INI = Path(build.__file__).parent / "grafana" / "config" / "grafana.ini"

# The keys of [auth.generic_oauth] and [auth] in Grafana 10.4's conf/defaults.ini (and
# its generic OAuth documentation): a misspelt key would be silently ignored by Grafana.
GENERIC_OAUTH_KEYS = {
    "name", "icon", "enabled", "allow_sign_up", "auto_login", "client_id", "client_secret",
    "scopes", "empty_scopes", "email_attribute_name", "email_attribute_path",
    "login_attribute_path", "name_attribute_path", "role_attribute_path",
    "role_attribute_strict", "groups_attribute_path", "id_token_attribute_name",
    "team_ids_attribute_path", "auth_url", "token_url", "api_url", "signout_redirect_url",
    "teams_url", "allowed_domains", "allowed_groups", "team_ids", "allowed_organizations",
    "tls_skip_verify_insecure", "tls_client_cert", "tls_client_key", "tls_client_ca",
    "use_pkce", "auth_style", "allow_assign_grafana_admin", "skip_org_role_sync",
    "use_refresh_token",
}  # fmt: skip
AUTH_KEYS = {
    "login_cookie_name", "login_maximum_inactive_lifetime_duration",
    "login_maximum_lifetime_duration", "token_rotation_interval_minutes",
    "disable_login_form", "disable_signout_menu", "signout_redirect_url", "oauth_auto_login",
    "oauth_state_cookie_max_age", "api_key_max_seconds_to_live", "sigv4_auth_enabled",
    "azure_auth_enabled", "oauth_skip_org_role_update_sync", "id_response_header_enabled",
}  # fmt: skip


def ini() -> configparser.ConfigParser:
    """The generated grafana.ini as Grafana's ini reader sees it (no interpolation)."""
    parser = configparser.ConfigParser(interpolation=None, comment_prefixes=(";", "#"))
    parser.read_string(INI.read_text(encoding="utf-8"))
    return parser


def test_the_generated_ini_is_current_and_knows_only_grafanas_keys() -> None:
    assert build.files()["config/grafana.ini"] == INI.read_text(encoding="utf-8")
    parsed = ini()
    assert set(parsed.sections()) == {"auth", "auth.generic_oauth"}
    assert set(parsed["auth.generic_oauth"]) <= GENERIC_OAUTH_KEYS
    assert set(parsed["auth"]) <= AUTH_KEYS


def test_the_provider_comes_from_the_environment_and_the_secret_from_a_file() -> None:
    oauth = ini()["auth.generic_oauth"]
    for key in ("auth_url", "token_url", "api_url", "client_id", "enabled"):
        assert re.fullmatch(r"\$__env\{[A-Z0-9_]+\}", oauth[key]), key
    assert oauth["client_secret"] == "$__file{/run/secrets/grafana_oidc_client_secret}"
    # Authorization code with PKCE, as the console; no role, no sign-in.
    assert (oauth["use_pkce"], oauth["role_attribute_strict"]) == ("true", "true")
    assert oauth["role_attribute_path"] == role_attribute_path()


CLAIMS: list[tuple[dict[str, Any], str | None]] = [
    ({"roles": ["safecity-viewer"]}, "Viewer"),
    ({"roles": ["safecity-operator"]}, "Editor"),
    ({"roles": ["safecity-admin"]}, "Admin"),
    ({"roles": ["safecity-viewer", "safecity-admin", "staff"]}, "Admin"),
    ({"roles": ["safecity-viewer", "safecity-operator"]}, "Editor"),
    ({"roles": ["staff"]}, None),
    ({"roles": []}, None),
    ({}, None),
]


@pytest.mark.parametrize(("claims", "grafana_role"), CLAIMS)
def test_grafana_gives_the_role_the_api_gives(
    claims: dict[str, Any], grafana_role: str | None
) -> None:
    expression = ini()["auth.generic_oauth"]["role_attribute_path"]
    assert jmespath.search(expression, claims) == grafana_role
    # The API reads the same claims to the same effect: the highest scope, or a refusal.
    settings = OidcSettings(issuer="https://id.example")
    if grafana_role is None:
        with pytest.raises(Exception, match="gives no safecity role"):
            person_from_claims({"sub": "x", **claims}, settings)
    else:
        scopes = person_from_claims({"sub": "x", **claims}, settings).scopes
        assert GRAFANA_ROLES[max(scopes, key=("read", "operate", "admin").index)] == grafana_role


def test_a_deployments_own_role_names_and_claim_map_the_same_way() -> None:
    expression = role_attribute_path("realm_access.roles", {"city-ops": "operate"})
    assert jmespath.search(expression, {"realm_access": {"roles": ["city-ops"]}}) == "Editor"
    assert jmespath.search(expression, {"realm_access": {"roles": ["x"]}}) is None
    assert set(ROLE_SCOPES.values()) == set(GRAFANA_ROLES)
