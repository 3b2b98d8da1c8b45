"""Ingest: MQTT subscription -> validation -> batched InfluxDB writes, dead letters, acks."""
