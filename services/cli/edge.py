"""`wakeline` subcommands of this area (registered by services.cli)."""

from __future__ import annotations


def register(sub) -> None:
    """No commands yet: each is added here once it works."""
