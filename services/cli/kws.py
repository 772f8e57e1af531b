"""`wakeline kws ...`: keyword-spotting data, training, export and evaluation."""

from __future__ import annotations

from services.cli import kws_eval, kws_train
from services.cli.common import add_group


def register(sub) -> None:
    grp = add_group(sub, "kws", "Keyword spotting: data, training, export, evaluation")
    kws_eval.register(grp)   # data build, score, detect, eval, bench, baseline
    kws_train.register(grp)  # train, export
