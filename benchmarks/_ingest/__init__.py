"""The ingest benchmark's parts; `benchmarks/ingest.py` runs them."""
