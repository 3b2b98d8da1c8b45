"""Simulated city fleet: seeded, realistic generators per sensor kind and the MQTT publisher."""
