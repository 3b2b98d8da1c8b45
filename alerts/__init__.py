"""Streaming rules -> alerts -> incidents (the `safecity alerts` service)."""
