"""ONNX export of a trained keyword-spotting model into a model directory the Spotter loads.

A model directory holds:
- `encoder.onnx`: feats [B, 2n, n_mels] + cache [B, S, C] -> logp [B, n, V], emb [B, n, E], cache_out;
  `metadata_props` carry the feature config, phoneme inventory, version and scoring constants;
- `matcher.npz`: the numpy matcher weights (`edge.scoring.MatcherWeights`);
- `phone_table.npz`: `emb` [39, E] representative phoneme vectors (the audio-compliant text
  encoder) and `logp` [39, V] mean CTC log-posteriors per phoneme (used to calibrate thresholds);
- optionally `encoder.int8.onnx` (dynamic int8 quantisation).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from edge.features import FeatureConfig
from edge.phonemizer import PHONEMES
from edge.scoring import LMAX, NMAX
from kws.matching import Matcher
from kws.models.encoder import EncoderArgs, StreamingEncoder

FORMAT_VERSION = "1"


def export_encoder(model: StreamingEncoder, path: Path, metadata: dict[str, str], opset: int = 17) -> None:
    """Write the streaming encoder with explicit cache input/output, check it, attach metadata."""
    import onnx

    model = model.eval().cpu()
    a = model.args
    feats = torch.randn(1, 2 * 5, a.n_mels)
    cache = torch.zeros(1, a.cache_len, a.dim)

    class _Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, feats, cache):
            return self.m.forward_chunk(feats, cache)

    torch.onnx.export(
        _Wrap(model), (feats, cache), str(path), opset_version=opset, dynamo=False,
        input_names=["feats", "cache"], output_names=["logp", "emb", "cache_out"],
        dynamic_axes={"feats": {0: "batch", 1: "frames"}, "cache": {0: "batch"}, "logp": {0: "batch", 1: "steps"},
                      "emb": {0: "batch", 1: "steps"}, "cache_out": {0: "batch"}},
    )
    m = onnx.load(str(path))
    for k, v in metadata.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation of the encoder's matrix multiplies (onnxruntime tooling)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])


def export_model(model: StreamingEncoder, matcher: Matcher, table_emb: np.ndarray, table_logp: np.ndarray,
                 out_dir: str | Path, *, w_sim: float = 1.0, w_ctc: float = 1.0, use_matcher: bool = True,
                 default_threshold: float = 0.5, feature_cfg: FeatureConfig | None = None,
                 extra: dict | None = None, int8: bool = False) -> Path:
    """Write a complete model directory; returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fc = feature_cfg or FeatureConfig()
    meta = {
        "wakeline_format": FORMAT_VERSION,
        "feature_config": json.dumps(fc.to_dict()),
        "phonemes": " ".join(PHONEMES),
        "blank_index": "0",
        "encoder_args": json.dumps(model.args.to_dict()),
        "cache_len": str(model.args.cache_len),
        "dim": str(model.args.dim),
        "stack": str(model.args.stack),
        "lookahead_frames": "0",
        "frame_shift_ms": str(10 * model.args.stack),
        "nmax": str(NMAX),
        "lmax": str(LMAX),
        "default_threshold": f"{default_threshold:.4f}",
        "extra": json.dumps(extra or {}),
    }
    export_encoder(model, out / "encoder.onnx", meta)
    if int8:
        try:
            quantize_int8(out / "encoder.onnx", out / "encoder.int8.onnx")
        except Exception as e:  # the fp32 model is the product; int8 is an optional extra
            (out / "int8_error.txt").write_text(repr(e))
    matcher.to_numpy(w_sim, w_ctc, use_matcher).save(out / "matcher.npz")
    np.savez(out / "phone_table.npz", emb=table_emb.astype(np.float32), logp=table_logp.astype(np.float32))
    return out


def untrained_tables(model: StreamingEncoder, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random unit phoneme vectors and a flat posterior table (for an untrained test model)."""
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((len(PHONEMES), model.args.emb_dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    logp = np.full((len(PHONEMES), model.args.n_tokens), -np.log(model.args.n_tokens), np.float32)
    return emb, logp


def export_untrained(out_dir: str | Path, seed: int = 0, small: bool = True) -> Path:
    """A valid model directory with random weights, in about a second (for tests and services)."""
    torch.manual_seed(seed)
    args = EncoderArgs(dim=64, hidden=128, dilations=[1, 2, 4]) if small else EncoderArgs()
    model = StreamingEncoder(args)
    emb, logp = untrained_tables(model, seed)
    return export_model(model, Matcher(), emb, logp, out_dir, extra={"untrained": True})


def load_checkpoint(path: str | Path):
    """(encoder, matcher, table_emb, table_logp, cfg) from a training checkpoint."""
    ck = torch.load(str(path), map_location="cpu", weights_only=False)
    model = StreamingEncoder(EncoderArgs(**ck["encoder_args"]))
    model.load_state_dict(ck["encoder"])
    matcher = Matcher()
    matcher.load_state_dict(ck["matcher"])
    return model, matcher, ck["table_emb"].numpy(), ck["table_logp"].numpy(), ck["config"]


def encoder_from_onnx(path: str | Path) -> StreamingEncoder:
    """Rebuild the torch encoder from an exported encoder.onnx (warm starts from a model dir).

    Named initializers map to parameters directly; the exporter renames the linear layers'
    weights (stored transposed for MatMul) in order of use: proj, then w1, w2 of each block, ctc, emb.
    The result is checked against onnxruntime on random input.
    """
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    m = onnx.load(str(path))
    meta = {p.key: p.value for p in m.metadata_props}
    model = StreamingEncoder(EncoderArgs(**json.loads(meta["encoder_args"]))).eval()
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    state = model.state_dict()
    new = {}
    for k in state:
        if f"m.{k}" in inits:
            new[k] = torch.from_numpy(inits[f"m.{k}"].copy())
    order = ["proj.weight"] + [f"blocks.{i}.{w}.weight" for i in range(len(model.blocks)) for w in ("w1", "w2")]
    order += ["ctc.weight", "emb.weight"]
    used = []
    for node in m.graph.node:
        for name in node.input:
            if name in inits and name.startswith("onnx::MatMul") and name not in used:
                used.append(name)
    if len(used) != len(order):
        raise ValueError(f"{path}: {len(used)} renamed MatMul weights, expected {len(order)}")
    for k, name in zip(order, used, strict=True):
        new[k] = torch.from_numpy(inits[name].T.copy())
    missing = set(state) - set(new)
    if missing:
        raise ValueError(f"{path}: no weights for {sorted(missing)}")
    model.load_state_dict(new)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 20, model.args.n_mels)).astype(np.float32) * 3 - 8
    c = np.zeros((1, model.args.cache_len, model.args.dim), np.float32)
    ref = sess.run(None, {"feats": x, "cache": c})[1]
    with torch.no_grad():
        got = model.forward_chunk(torch.from_numpy(x), torch.from_numpy(c))[1].numpy()
    if np.abs(got - ref).max() > 1e-3:
        raise ValueError(f"{path}: rebuilt encoder disagrees with onnxruntime ({np.abs(got - ref).max():.2e})")
    return model
