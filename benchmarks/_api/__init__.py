"""Parts of the API benchmark (`benchmarks/api.py`)."""
