"""The safecity REST API: FastAPI app factory, routes and the InfluxQL query layer.

`api.app` (FastAPI and every route) is imported by what serves or tests the API, not
by this package: `safecity apikey ...` and the other commands start without it.
"""
