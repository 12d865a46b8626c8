"""stor: store and serve files addressed by their SHA-256 over HTTP."""

__version__ = "2.0.0"
