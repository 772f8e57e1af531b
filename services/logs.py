"""Structured logging for every Wakeline process: human-readable or one JSON object per line."""

from __future__ import annotations

import json
import logging
import os
import sys
import time


class JsonFormatter(logging.Formatter):
    """One JSON object per record; `extra={...}` fields are included as keys."""

    _SKIP = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in self._SKIP and not k.startswith("_"):
                out[k] = v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


class HumanFormatter(logging.Formatter):
    _SKIP = JsonFormatter._SKIP

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-5s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = {k: v for k, v in record.__dict__.items() if k not in self._SKIP and not k.startswith("_")}
        if extras:
            base += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return base


def setup_logging(level: str | None = None, fmt: str | None = None) -> None:
    """Configure the root logger once. `fmt` is "human" or "json" (env WAKELINE_LOG_FORMAT)."""
    level = (level or os.environ.get("WAKELINE_LOG_LEVEL") or "info").upper()
    fmt = fmt or os.environ.get("WAKELINE_LOG_FORMAT") or "human"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def add_logging_flags(parser) -> None:
    parser.add_argument("--log-level", default=None, help="debug, info, warning, error (env WAKELINE_LOG_LEVEL)")
    parser.add_argument("--log-format", default=None, choices=["human", "json"], help="log format (env WAKELINE_LOG_FORMAT)")
