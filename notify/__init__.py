"""Notifications: incidents reach the people on call (rosters, escalation, channels)."""
