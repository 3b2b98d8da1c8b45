"""safecity: the message contract, city registry, settings and shared boundaries."""

__version__ = "0.1.0"
