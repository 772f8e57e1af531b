"""The `wakeline` console script.

Each area registers its own subcommands from its own module in this package, so the areas
grow independently. Modules here stay cheap to import: heavy libraries (torch, onnxruntime,
grpc servers) are imported inside the command handlers, so `wakeline --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from services import __version__
from services.logs import add_logging_flags, setup_logging

# (module, help) for each top-level group; each module defines `register(subparsers)`.
_AREAS = [
    "services.cli.proto",
    "services.cli.bus",
    "services.cli.kws",
    "services.cli.edge",
    "services.cli.device",
    "services.cli.llm",
    "services.cli.worker",
    "services.cli.stack",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wakeline",
        description="Wakeline: text-enrolled keyword spotting at the edge, an LLM engine on the server.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"wakeline {__version__}")
    add_logging_flags(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _AREAS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        # a group given without its subcommand prints that group's help
        (getattr(args, "group_parser", None) or parser).print_help()
        return 2
    setup_logging(args.log_level, args.log_format)
    try:
        rc = args.func(args)
    except (FileNotFoundError, NotADirectoryError, PermissionError, IsADirectoryError) as e:
        # a missing model, manifest or file is the user's to fix: one line, not a traceback
        print(f"wakeline: error: {e}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
