"""The identity provider's roles and what they grant: one table for the API and Grafana.

A person's roles (or groups) come from the city's identity provider; each role the
table knows grants a safecity scope (the API's `read` < `operate` < `admin`) and the
matching Grafana organisation role. Deployments map their own role names with
SAFECITY_OIDC__ROLE_SCOPES (the API) and the generated Grafana configuration.
"""

from __future__ import annotations

from typing import Literal

Scope = Literal["read", "operate", "admin"]

ROLES_CLAIM = "roles"
"""The claim that holds the roles unless a deployment names another."""

ROLE_SCOPES: dict[str, Scope] = {
    "safecity-viewer": "read",
    "safecity-operator": "operate",
    "safecity-admin": "admin",
}
"""Provider role -> safecity scope."""

GRAFANA_ROLES: dict[str, str] = {"admin": "Admin", "operate": "Editor", "read": "Viewer"}
"""safecity scope -> Grafana organisation role (an operator may edit dashboards)."""
