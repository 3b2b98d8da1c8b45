#!/usr/bin/env sh
# The passwords docker compose hands its containers as files (compose `secrets:`):
# random values made once in var/compose/secrets, or $COMPOSE_SECRETS_DIR (kept:
# re-running changes nothing).
# The directory is private to you; the files themselves must be readable by the
# containers' users, which compose bind-mounts them for (not uid-mapped outside swarm).
set -eu
cd "$(dirname "$0")/.."
dir="${COMPOSE_SECRETS_DIR:-var/compose/secrets}"
mkdir -p "$dir"
chmod 700 "$dir"
for name in influx_admin_password influx_password grafana_admin_password; do
    if [ ! -s "$dir/$name" ]; then
        head -c 32 /dev/urandom | base64 | tr -d '/+=\n' | head -c 32 > "$dir/$name"
        chmod 644 "$dir/$name"
        echo "made $dir/$name"
    fi
done
# Grafana's webhook into the API needs an `operate` API key, which only the running API's
# key store can issue: a placeholder until you put one there (dashboards/README.md).
if [ ! -e "$dir/grafana_webhook_key" ]; then
    echo "not-set: safecity apikey create --name grafana --scopes operate" > "$dir/grafana_webhook_key"
    chmod 644 "$dir/grafana_webhook_key"
    echo "made $dir/grafana_webhook_key (a placeholder: see dashboards/README.md)"
fi
# Grafana's client secret at the city's identity provider (sign-in is off until
# GRAFANA_OIDC_ENABLED=true): empty until you put the provider's secret there.
if [ ! -e "$dir/grafana_oidc_client_secret" ]; then
    : > "$dir/grafana_oidc_client_secret"
    chmod 644 "$dir/grafana_oidc_client_secret"
    echo "made $dir/grafana_oidc_client_secret (empty: see dashboards/README.md)"
fi
echo "compose secrets ready in $dir (Grafana: admin / $(cat "$dir/grafana_admin_password"))"
