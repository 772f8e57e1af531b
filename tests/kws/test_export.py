"""ONNX export: explicit caches, metadata, checker, torch == onnxruntime over several chunks."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from kws.export import export_model, export_untrained, untrained_tables
from kws.matching import Matcher
from kws.models.encoder import EncoderArgs, StreamingEncoder


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(1)
    model = StreamingEncoder(EncoderArgs()).eval()
    emb, logp = untrained_tables(model)
    d = export_model(model, Matcher(), emb, logp, tmp_path_factory.mktemp("m"), default_threshold=0.61, int8=True)
    return model, d


def test_metadata_and_checker(exported):
    model, d = exported
    m = onnx.load(str(d / "encoder.onnx"))
    onnx.checker.check_model(m)
    meta = {p.key: p.value for p in m.metadata_props}
    assert json.loads(meta["feature_config"])["n_mels"] == 40
    assert len(meta["phonemes"].split()) == 39 and meta["blank_index"] == "0"
    assert int(meta["cache_len"]) == model.args.cache_len and meta["default_threshold"] == "0.6100"
    assert meta["wakeline_format"] == "1" and meta["lookahead_frames"] == "0"
    names = [i.name for i in m.graph.input]
    assert names == ["feats", "cache"]


def test_torch_and_onnxruntime_agree_over_chunks(exported):
    model, d = exported
    sess = ort.InferenceSession(str(d / "encoder.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng()
    b = 3
    cache_t = model.initial_cache(b)
    cache_o = np.zeros((b, model.args.cache_len, model.args.dim), np.float32)
    for n in (10, 10, 4, 10, 2):  # several chunks, odd sizes included
        x = (rng.standard_normal((b, n, 40)) * 3 - 8).astype(np.float32)
        with torch.no_grad():
            lp_t, e_t, cache_t = model.forward_chunk(torch.from_numpy(x), cache_t)
        lp_o, e_o, cache_o = sess.run(None, {"feats": x, "cache": cache_o})
        for a, ref in ((lp_o, lp_t), (e_o, e_t), (cache_o, cache_t)):
            ref = ref.numpy()
            assert np.max(np.abs(a - ref)) <= 1e-3 * max(1.0, np.max(np.abs(ref)))


def test_int8_variant_runs_close(exported):
    model, d = exported
    if not (d / "encoder.int8.onnx").exists():
        pytest.skip(f"int8 quantisation failed here: {(d / 'int8_error.txt').read_text()}")
    q = ort.InferenceSession(str(d / "encoder.int8.onnx"), providers=["CPUExecutionProvider"])
    f = ort.InferenceSession(str(d / "encoder.onnx"), providers=["CPUExecutionProvider"])
    x = (np.random.default_rng().standard_normal((1, 20, 40)) * 3 - 8).astype(np.float32)
    c = np.zeros((1, model.args.cache_len, model.args.dim), np.float32)
    ef, eq = f.run(None, {"feats": x, "cache": c})[1], q.run(None, {"feats": x, "cache": c})[1]
    cos = (ef * eq).sum(-1)
    assert cos.mean() > 0.9
    assert (d / "encoder.int8.onnx").stat().st_size < 0.5 * (d / "encoder.onnx").stat().st_size


def test_export_untrained_is_loadable(tmp_path):
    d = export_untrained(tmp_path / "u")
    for f in ("encoder.onnx", "matcher.npz", "phone_table.npz"):
        assert (d / f).exists()
