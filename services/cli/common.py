"""Helpers shared by the CLI modules."""

from __future__ import annotations

import argparse


def add_group(sub, name: str, help: str) -> argparse._SubParsersAction:
    """Add a command group (`wakeline NAME ...`) and return its subparsers."""
    p = sub.add_parser(name, help=help, description=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.set_defaults(group_parser=p, func=None)
    return p.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")


def add_command(sub, name: str, help: str, func) -> argparse.ArgumentParser:
    """Add a leaf command whose handler is `func(args) -> int`."""
    p = sub.add_parser(name, help=help, description=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.set_defaults(func=func)
    return p
