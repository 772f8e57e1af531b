"""Model soup: the uniform weight average of model directories that share one warm-start lineage.

Variants fine-tuned from the same weights with the same seeds (an ablation's arms) stay in one basin
of the loss, so their average is a model of its own, usually at least as good as the best arm away
from the training distribution (Wortsman et al., 2022, "Model soups"). What is averaged:

- the encoder's parameters (rebuilt from each `encoder.onnx`; the shapes must agree);
- the matcher's weights (`matcher.npz`; the arms start from the same seeded initialisation, so
  their matchers are close too: cosine 0.90-0.99 between the session-8 arms), or one ingredient's
  matcher as it is (`matcher_from`: on the session-8 arms the best arm's matcher on the averaged
  encoder beat the averaged matcher, docs/kws.md "Run 16");
- the phoneme table: `emb` averaged and re-normalised to unit length, `logp` averaged.

The result is exported like a trained model (`kws.export.export_model`), with the ingredients in
the metadata's `extra`. Its matcher gate is the most permissive of the ingredients' (NEG when they
were not calibrated): run `wakeline kws calibrate` on it afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from edge.features import FeatureConfig
from edge.scoring import MatcherWeights
from kws.export import encoder_from_onnx, export_model
from kws.matching import Matcher

_WEIGHTS = ("w1", "b1", "w2", "b2", "w3", "b3", "w4", "b4", "w5", "b5")


def _metadata(model_dir: Path) -> dict[str, str]:
    import onnx

    m = onnx.load(str(model_dir / "encoder.onnx"), load_external_data=False)
    return {p.key: p.value for p in m.metadata_props}


def soup(model_dirs: list[str | Path], out_dir: str | Path, default_threshold: float | None = None,
         matcher_from: str | Path | None = None) -> Path:
    """Average the models in `model_dirs` into `out_dir`; returns its path.

    Args:
        model_dirs: two or more model directories with the same encoder shape and scoring constants.
        out_dir: the new model directory.
        default_threshold: the soup's keyword threshold (default: the first ingredient's).
        matcher_from: one of `model_dirs` whose matcher is kept as it is (default: average the matchers).
    Raises:
        ValueError: fewer than two ingredients, or ones that cannot be averaged.
    """
    dirs = [Path(d) for d in model_dirs]
    if len(dirs) < 2:
        raise ValueError("a soup needs at least two models")
    encoders = [encoder_from_onnx(d / "encoder.onnx") for d in dirs]
    shape = encoders[0].args.to_dict()
    for d, e in zip(dirs[1:], encoders[1:], strict=True):
        if e.args.to_dict() != shape:
            raise ValueError(f"{d}: encoder {e.args.to_dict()} differs from {dirs[0]}'s {shape}")
    matchers = [MatcherWeights.load(d / "matcher.npz") for d in dirs]
    m0 = matchers[0]
    for d, m in zip(dirs[1:], matchers[1:], strict=True):
        if (m.w_sim, m.w_ctc, m.use_matcher) != (m0.w_sim, m0.w_ctc, m0.use_matcher) or m.w4.shape != m0.w4.shape:
            raise ValueError(f"{d}: matcher constants or shapes differ from {dirs[0]}'s")
    model = encoders[0]
    states = [e.state_dict() for e in encoders]
    model.load_state_dict({k: torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype)
                           for k, v in states[0].items()})
    tables = [np.load(d / "phone_table.npz") for d in dirs]
    emb = np.mean([t["emb"] for t in tables], axis=0)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    logp = np.mean([t["logp"] for t in tables], axis=0)
    meta = _metadata(dirs[0])
    metas = [meta] + [_metadata(d) for d in dirs[1:]]
    if any(m.get("feature_config") != meta.get("feature_config") for m in metas):
        raise ValueError("the ingredients were trained on different front ends (feature_config)")
    threshold = float(meta.get("default_threshold", 0.5)) if default_threshold is None else default_threshold
    if matcher_from is not None and Path(matcher_from) not in dirs:
        raise ValueError(f"matcher_from {matcher_from} is not one of the ingredients")
    extra = {"soup": [str(d) for d in dirs], "matcher_from": None if matcher_from is None else str(matcher_from),
             "ingredients": [json.loads(m.get("extra", "{}")) for m in metas]}
    out = export_model(model, Matcher(), emb, logp, out_dir, w_sim=m0.w_sim, w_ctc=m0.w_ctc,
                       use_matcher=m0.use_matcher, default_threshold=threshold, extra=extra,
                       feature_cfg=FeatureConfig.from_dict(json.loads(meta["feature_config"])))
    if matcher_from is not None:
        matchers = [matchers[dirs.index(Path(matcher_from))]]
    avg = {k: np.mean([getattr(m, k) for m in matchers], axis=0).astype(np.float32) for k in _WEIGHTS}
    MatcherWeights(**avg, w_sim=m0.w_sim, w_ctc=m0.w_ctc, use_matcher=m0.use_matcher,
                   gate=min(m.gate for m in matchers)).save(out / "matcher.npz")
    return out
