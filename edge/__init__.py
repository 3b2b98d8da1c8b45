"""Edge device agent: one MQTT v5 identity per device, birth/will, store-and-forward."""
