"""Wakeline services: gRPC servers, the Redis Streams bus, workers and the CLI.

This is the I/O side: it wraps the libraries `edge` (on-device runtime) and `llm` (engine).
"""

__version__ = "0.1.0"
