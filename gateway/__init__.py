"""Durable Gateway: a reverse proxy that makes HTTP endpoints durable."""

__version__ = "0.1.0"
