"""Subcommands of this area, registered into their group by services.cli."""

from __future__ import annotations


def register(grp) -> None:
    """No commands yet: each is added here once it works."""
