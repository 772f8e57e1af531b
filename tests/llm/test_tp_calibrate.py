"""`wakeline llm calibrate` and TP on real Hugging Face checkpoints (loader path), gloo on CPU."""

from __future__ import annotations

import pytest
import torch

from llm.parallel.launch import run_ranks
from tests.llm.conftest import make_checkpoint

pytestmark = pytest.mark.timeout(300)


def _hf_tp_worker(rank: int, world: int, model_dirs: list[str], ids: list[int]) -> list[torch.Tensor]:
    from llm.parallel.calibrate import load_tp_model

    out = []
    for d in model_dirs:
        model, _ = load_tp_model(d, "cpu")
        x = torch.tensor([ids])
        model.setup_caches(1, len(ids))
        with torch.no_grad():
            out.append(model(x, torch.arange(len(ids))[None], fresh=True))
    return out


def test_tp2_on_hf_checkpoints_match_transformers(tmp_path):
    """Checkpoints loaded by llm.loader (tied llama, Mixtral) and sharded over 2 ranks give transformers' logits."""
    archs = ["llama", "mixtral"]
    ids = [1, 17, 42, 99, 5, 250, 31, 64, 7]
    refs = []
    for arch in archs:
        hf = make_checkpoint(arch, tmp_path / arch, seed=11)
        with torch.no_grad():
            refs.append(hf(torch.tensor([ids])).logits.float())
    for per_rank in run_ranks(_hf_tp_worker, 2, [str(tmp_path / a) for a in archs], ids):
        for arch, logits, ref in zip(archs, per_rank, refs, strict=True):
            err = ((logits - ref).abs().max() / ref.abs().max()).item()
            assert err <= 1e-4, f"{arch}: relative error vs transformers {err:.2e}"


def test_calibrate_cli_writes_versioned_file(tmp_path):
    from llm.parallel.calibrate import checkpoint_fingerprint
    from llm.parallel.quant_comm import Calibration, QuantAllReduce, configure
    from services.cli import main

    d = tmp_path / "moe"
    make_checkpoint("mixtral", d, seed=3)
    out = tmp_path / "calib" / "tp2.safetensors"
    rc = main(["llm", "calibrate", "--model", str(d), "--tp", "2", "--out", str(out), "--n-prompts", "4"])
    assert rc == 0 and out.is_file()
    assert out.stat().st_size < 64 << 10, "the calibration file stays small"
    cal = Calibration.load(str(out), tp=2, checkpoint=checkpoint_fingerprint(d))
    assert sorted(cal.ranges) == ["layers.0.attn", "layers.0.mlp", "layers.1.attn", "layers.1.mlp"]
    for r in cal.ranges.values():
        assert r.shape == (2, 64) and bool((r > 0).all())
    with pytest.raises(ValueError, match="TP=2"):
        Calibration.load(str(out), tp=4)
    q = configure(str(out), tp=2)
    try:
        assert isinstance(q, QuantAllReduce) and q.calib.checkpoint == checkpoint_fingerprint(d)
    finally:
        from llm.parallel import comm

        comm.set_quantizer(None)


def _serve_worker(rank: int, world: int, model_dir: str) -> list[str] | int:
    from llm.engine import Engine
    from llm.parallel import mirror
    from llm.parallel.calibrate import load_tp_model
    from llm.sampling import SamplingParams

    model, tok = load_tp_model(model_dir, "cpu")
    if rank:
        return mirror.follow(model)
    mirror.lead(model)
    try:
        eng = Engine(model, tok, max_batch_size=2, max_context=128, cuda_graphs=False,
                     max_prefill_tokens_per_step=8)
        return eng.generate(PROMPTS, SamplingParams(max_tokens=6))
    finally:
        mirror.stop(model)


PROMPTS = ["turn the lights on", "what time is it? set a timer", "open the door"]


def test_tp2_engine_rank0_leads_followers_mirror(tmp_path):
    """The engine on rank 0 (continuous batching, chunked prefill) with a follower gives single-device text."""
    from llm.engine import Engine
    from llm.sampling import SamplingParams

    d = tmp_path / "llama"
    make_checkpoint("llama", d, seed=5)
    ref = Engine.from_pretrained(str(d), max_batch_size=2, max_context=128, cuda_graphs=False,
                                 max_prefill_tokens_per_step=8).generate(PROMPTS, SamplingParams(max_tokens=6))
    texts, n_forwards = run_ranks(_serve_worker, 2, str(d))
    assert any(ref) and texts == ref
    assert n_forwards >= 6, "the follower ran every prefill chunk and decode step"
