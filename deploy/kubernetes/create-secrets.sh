#!/usr/bin/env sh
# The Secrets the manifests mount, made once before `kubectl apply -k` (never committed):
#   safecity-influx    admin-password, password   (InfluxDB admin and the services' account)
#   safecity-grafana   admin-password, grafana_webhook_key (an operate API key),
#                      oidc-client-secret (Grafana's at the identity provider; $GRAFANA_OIDC_CLIENT_SECRET)
#   safecity-api-keys  apikeys.json               (API keys: hashes only)
#   safecity-notify    ack-links.key              (signs acknowledgement links; notifier + API)
#   safecity-api-hop   command-hop.key            (the API replicas sign the callers they pass
#                                                  to the command service; every API pod)
# The broker's accounts, certificates and the services' MQTT secrets are made by the
# provisioning Job itself. Usage: deploy/kubernetes/create-secrets.sh [namespace]
set -eu
ns="${1:-safecity}"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
umask 077
pw() { head -c 32 /dev/urandom | base64 | tr -d '/+=\n' | head -c 32; }
pw > "$dir/admin-password"
pw > "$dir/password"
pw > "$dir/grafana-admin-password"
kubectl get namespace "$ns" >/dev/null 2>&1 || kubectl create namespace "$ns"
kubectl -n "$ns" create secret generic safecity-influx \
    --from-file=admin-password="$dir/admin-password" --from-file=password="$dir/password"
# Grafana's client secret at the identity provider (empty: sign-in stays off).
printf '%s' "${GRAFANA_OIDC_CLIENT_SECRET:-}" > "$dir/grafana-oidc-client-secret"
# Grafana's webhook into the API (one incident list) authenticates with an operate key.
safecity apikey create --keys-file "$dir/apikeys.json" --name grafana --scopes operate \
    | sed -n 's/^SAFECITY_API_KEY=//p' | tr -d '\n' > "$dir/grafana_webhook_key"
kubectl -n "$ns" create secret generic safecity-grafana \
    --from-file=admin-password="$dir/grafana-admin-password" \
    --from-file=grafana_webhook_key="$dir/grafana_webhook_key" \
    --from-file=oidc-client-secret="$dir/grafana-oidc-client-secret"
# A first key for an operator; more with `safecity apikey create --keys-file` and
# `kubectl create secret ... --dry-run=client -o yaml | kubectl apply -f -`.
safecity apikey create --keys-file "$dir/apikeys.json" --name operator --scopes read,operate
kubectl -n "$ns" create secret generic safecity-api-keys --from-file=apikeys.json="$dir/apikeys.json"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/ack-links.key"
kubectl -n "$ns" create secret generic safecity-notify --from-file=ack-links.key="$dir/ack-links.key"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/command-hop.key"
kubectl -n "$ns" create secret generic safecity-api-hop --from-file=command-hop.key="$dir/command-hop.key"
echo "Secrets created in namespace $ns; the API key above is shown only once."
