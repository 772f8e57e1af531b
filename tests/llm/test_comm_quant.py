"""Quantized all-reduce numerics on CPU (gloo, 2 and 4 spawned ranks, torch reference kernels)."""

from __future__ import annotations

import logging

import pytest
import torch

from llm.parallel.launch import run_ranks

pytestmark = pytest.mark.timeout(240)
H = 512


def partial(rank: int, n: int, seed: int) -> torch.Tensor:
    """A rank's partial sum with a few consistently large channels, like real TP activations."""
    g = torch.Generator().manual_seed(seed * 100 + rank)
    x = torch.randn(n, H, generator=g) * (0.5 + torch.rand(H, generator=g))
    x[:, [5, 77, 200, 301, 444]] *= 60
    return x


def _numerics_worker(rank: int, world: int) -> dict:
    from llm.parallel import comm
    from llm.parallel.quant_comm import Calibration, QuantAllReduce, QuantCommConfig, RangeRecorder

    # calibration on other data than the test data
    rec = RangeRecorder()
    for s in range(4):
        rec("site", partial(rank, 16, seed=50 + s))
    cal = Calibration(rec.gather(), tp=world)
    x = partial(rank, 24, seed=1)
    exact = x.clone()
    torch.distributed.all_reduce(exact)
    out = {"bits": {}, "outliers": cal.outliers("site", H // 64).tolist()}
    for name, cfg in {
        "one_shot": QuantCommConfig(mode="one_shot", min_bytes=0),
        "two_shot": QuantCommConfig(mode="two_shot", min_bytes=0),
        "naive_int4": QuantCommConfig(outlier_div=0, min_bytes=0),
    }.items():
        q = QuantAllReduce(cfg, cal)
        comm.set_quantizer(q)
        comm.stats.clear()
        got = comm.all_reduce(x.clone(), "site")
        assert comm.stats["quant_calls"] == 1
        out[name] = ((got - exact).norm() / exact.norm()).item()
        out[name + "_sum"] = got
        out["bits"][name] = q.bits_per_value(H)
    # a message under the size gate takes the exact path
    comm.set_quantizer(QuantAllReduce(QuantCommConfig(min_bytes=1 << 30), cal))
    comm.stats.clear()
    small = comm.all_reduce(x.clone(), "site")
    out["gate_exact"] = torch.equal(small, exact) and comm.stats["plain_calls"] == 1
    comm.set_quantizer(None)
    return out


@pytest.mark.parametrize("world", [2, 4])
def test_quantized_all_reduce_numerics(world):
    res = run_ranks(_numerics_worker, world)
    r0 = res[0]
    assert r0["outliers"][:5] == [5, 77, 200, 301, 444] or set([5, 77, 200, 301, 444]) <= set(r0["outliers"])
    # 4-bit symmetric codes with 15 levels: relative RMS error of a few %, not more
    assert r0["one_shot"] < 0.05, r0["one_shot"]
    assert r0["two_shot"] < 0.08, r0["two_shot"]
    # the outlier channels matter: without them each group's scale is set by a 60x channel
    assert r0["naive_int4"] > 3 * r0["one_shot"], (r0["naive_int4"], r0["one_shot"])
    assert r0["gate_exact"]
    for r in res[1:]:
        for mode in ("one_shot", "two_shot", "naive_int4"):
            assert torch.equal(r[mode + "_sum"], r0[mode + "_sum"]), f"rank results differ ({mode})"
    assert r0["bits"]["one_shot"] == pytest.approx(4 + 16 / 128 + 16 * (H // 64) / H)
    assert r0["bits"]["naive_int4"] == pytest.approx(4 + 16 / 128)


def test_calibration_file_roundtrip_and_checks(tmp_path):
    from llm.parallel.quant_comm import Calibration

    ranges = {"layers.0.attn": torch.rand(2, 64), "layers.0.mlp": torch.rand(2, 64)}
    ranges["layers.0.mlp"][1, 9] = 100.0
    cal = Calibration(ranges, tp=2, checkpoint="abc123", n_prompts=5)
    path = str(tmp_path / "calib.safetensors")
    cal.save(path)
    back = Calibration.load(path, tp=2, checkpoint="abc123")
    assert back.n_prompts == 5 and torch.equal(back.ranges["layers.0.attn"], ranges["layers.0.attn"])
    assert 9 in back.outliers("layers.0.mlp", 1).tolist()
    with pytest.raises(ValueError, match="TP=2"):
        Calibration.load(path, tp=4)
    with pytest.raises(ValueError, match="checkpoint"):
        Calibration.load(path, checkpoint="other")


def test_no_calibration_warns_and_stays_plain(caplog, tmp_path):
    from llm.parallel import comm
    from llm.parallel.quant_comm import configure

    with caplog.at_level(logging.WARNING):
        assert configure(str(tmp_path / "missing.safetensors"), tp=2) is None
    assert comm.get_quantizer() is None
    assert "no calibration file" in caplog.text
