"""Where the shipped default models live, so the defaults work from any working directory.

A relative `--model models/kws/default` typed by a user means the folder under their working
directory; the *defaults* mean the models this checkout ships, wherever the command runs from.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shipped(rel: str) -> Path:
    """The shipped model folder `rel` (e.g. "models/kws/default") of this checkout.

    Falls back to `rel` under the working directory when the package runs outside a checkout
    (a wheel install), so a deployment can still mount its models at ./models.
    """
    p = REPO / rel
    return p if p.exists() else Path(rel)


KWS_MODEL = shipped("models/kws/default")
LLM_MODEL = shipped("models/llm/dense")
