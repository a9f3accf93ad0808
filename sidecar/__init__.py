"""A synchronising sidecar for asynchronous REST APIs."""

__version__ = "0.1.0"
