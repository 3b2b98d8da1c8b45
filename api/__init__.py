"""The safecity REST API: FastAPI app factory, routes and the InfluxQL query layer."""

from api.app import create_app

__all__ = ["create_app"]
