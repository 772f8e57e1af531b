"""`kws.soup`: the averaged model holds the mean weights, loads in the Spotter, and a soup of one model
with itself scores exactly like that model."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from edge.scoring import MatcherWeights
from edge.spotter import Spotter
from kws.export import encoder_from_onnx, export_model
from kws.matching import Matcher
from kws.soup import soup


def _model(path, seed: int, hidden: int = 128):
    """A small random model: every parameter perturbed (the exporter would merge identical untrained
    norms, which `encoder_from_onnx` cannot map back), seeded matcher weights."""
    from kws.export import untrained_tables
    from kws.models.encoder import EncoderArgs, StreamingEncoder

    torch.manual_seed(seed)
    enc = StreamingEncoder(EncoderArgs(dim=64, hidden=hidden, dilations=[1, 2, 4]))
    with torch.no_grad():
        for prm in enc.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    return export_model(enc, Matcher(), *untrained_tables(enc, seed), path)


def test_soup_is_the_mean(tmp_path):
    a, b = _model(tmp_path / "a", 0), _model(tmp_path / "b", 1)
    out = soup([a, b], tmp_path / "s", default_threshold=0.6)
    got = encoder_from_onnx(out / "encoder.onnx").state_dict()
    sa, sb = (encoder_from_onnx(d / "encoder.onnx").state_dict() for d in (a, b))
    for k, v in got.items():
        torch.testing.assert_close(v, (sa[k] + sb[k]) / 2, rtol=0, atol=1e-6)
    ma, mb, ms = (MatcherWeights.load(d / "matcher.npz") for d in (a, b, out))
    np.testing.assert_allclose(ms.w4, (ma.w4 + mb.w4) / 2, atol=1e-7)
    assert not np.allclose(ma.w4, mb.w4)
    emb = np.load(out / "phone_table.npz")["emb"]
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    meta = {p.key: p.value for p in onnx.load(str(out / "encoder.onnx")).metadata_props}
    assert meta["default_threshold"] == "0.6000"
    assert json.loads(meta["extra"])["soup"] == [str(a), str(b)]
    x = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    s = Spotter.from_dir(out).score_pair(x, 16000, "lights on")
    assert 0.0 <= s <= 1.0
    kept = soup([a, b], tmp_path / "k", matcher_from=b)
    np.testing.assert_array_equal(MatcherWeights.load(kept / "matcher.npz").w4, mb.w4)
    with pytest.raises(ValueError, match="not one of"):
        soup([a, b], tmp_path / "k2", matcher_from=tmp_path)


def test_soup_of_one_model_scores_like_it(tmp_path):
    a = _model(tmp_path / "a", 3)
    out = soup([a, a], tmp_path / "s")
    x = np.random.default_rng(1).standard_normal(24000).astype(np.float32) * 0.1
    texts = ["lights on", "turn off the radio", "hey"]
    want = Spotter.from_dir(a).score_pairs(x, 16000, texts)
    got = Spotter.from_dir(out).score_pairs(x, 16000, texts)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_soup_refuses_what_cannot_be_averaged(tmp_path):
    a = _model(tmp_path / "a", 0)
    with pytest.raises(ValueError, match="at least two"):
        soup([a], tmp_path / "s1")
    b = _model(tmp_path / "b", 1, hidden=256)
    with pytest.raises(ValueError, match="encoder"):
        soup([a, b], tmp_path / "s2")
