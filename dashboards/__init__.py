"""Grafana provisioning as code: datasource, dashboards and alert rules, and a push client."""
