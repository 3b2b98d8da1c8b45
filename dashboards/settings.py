"""Settings of the dashboards push."""

from __future__ import annotations

from pydantic import Field, SecretStr

from safecity.settings import StorageServiceSettings


class DashboardsSettings(StorageServiceSettings):
    """Settings of `safecity dashboards push` (the Grafana, and the InfluxDB it should query)."""

    grafana_url: str = Field("http://127.0.0.1:3000", description="The Grafana to push to.")
    grafana_token: SecretStr | None = Field(
        None, description="A Grafana service-account token (Editor or Admin)."
    )
    grafana_influx_url: str | None = Field(
        default=None, description="InfluxDB URL as Grafana's server reaches it; empty = influx.url"
    )
