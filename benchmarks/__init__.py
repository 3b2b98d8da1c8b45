"""Benchmarks (not part of `make test`): each module prints its conditions and figures."""
