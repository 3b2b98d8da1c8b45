"""The city-size benchmark's parts; `benchmarks/citysize.py` runs them."""
