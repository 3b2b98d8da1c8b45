"""Channels: one narrow interface (send one delivery -> an outcome) and its implementations."""
