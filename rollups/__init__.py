"""The rollup job: raw telemetry -> rollup tiers, through the v1 /write API."""
