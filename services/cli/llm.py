"""`wakeline llm ...`: the LLM engine and service."""

from __future__ import annotations

from services.cli import llm_calibrate, llm_serve
from services.cli.common import add_group


def register(sub) -> None:
    grp = add_group(sub, "llm", "LLM engine and service")
    llm_serve.register(grp)      # serve, generate, info
    llm_calibrate.register(grp)  # calibrate (quantized all-reduce)
