"""Training: losses fall on a fixed batch; checkpoints resume; the CLI exports a checkpoint."""

from __future__ import annotations

import numpy as np
import torch

from kws.train import TrainConfig, Trainer, build_rows, pick_span, rank_loss

SMALL = {"dim": 48, "hidden": 96, "dilations": [1, 2]}


def _examples(rng, n=8):
    out = []
    for _ in range(n):
        words, ids, frames, k, t = [], [], [], 0, 3
        for _w in range(int(rng.integers(2, 4))):
            ph = list(rng.integers(0, 39, size=int(rng.integers(2, 5))))
            lab = np.repeat(ph, 3)
            words.append((k, k + len(ph) - 1, t + len(lab) - 1))
            ids += ph
            frames += list(lab)
            k += len(ph)
            t += len(lab)
        frames = [-1] * 3 + frames + [-1] * 5
        feats = rng.standard_normal((2 * len(frames), 40)).astype(np.float16)
        for j, p in enumerate(frames):  # a learnable phoneme signature per frame
            if p >= 0:
                feats[2 * j : 2 * j + 2, p] += 4
        out.append({"feats": feats, "ids": np.array(ids, np.int16), "frames": np.array(frames, np.int16),
                    "words": np.array(words, np.int32)})
    return out


def test_rows_and_spans():
    rng = np.random.default_rng()
    ex = _examples(rng, 4)
    ids, anchor = pick_span(ex[0], rng)
    assert len(ids) >= 2 and 0 <= anchor < len(ex[0]["frames"])
    rows = build_rows(ex, rng, confusable=True)
    assert len(rows) == 12 and [r[2] for r in rows[:3]] == [1, 0, 0]
    assert len(rows[1][4]) == len(rows[1][1])  # per-phoneme labels for the confusable


def test_edge_deletion_rows():
    rng = np.random.default_rng(3)
    ex = _examples(rng, 16)
    rows = build_rows(ex, rng, confusable=True, edge_deletion=1.0)
    sides = set()
    for pos, hard in zip(rows[0::3], rows[1::3], strict=True):
        ids, new = pos[1], hard[1]
        assert hard[2] == 0 and hard[0] == pos[0] and hard[3] == pos[3]
        if len(ids) > 2:  # the positive minus its first or last phoneme, every phoneme left matching
            assert new in (ids[1:], ids[:-1]) and hard[4] == [1] * len(new)
            sides.add("start" if new == ids[1:] else "end")
    assert sides == {"start", "end"}
    # at 0 the hard rows are the usual generated confusables, drawn from the same random stream
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    assert build_rows(ex, a, True, edge_deletion=0.0) == build_rows(ex, b, True)


def test_loss_decreases_and_resume(tmp_path):
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    data = _examples(rng, 8)
    cfg = TrainConfig(steps=25, batch=8, encoder=SMALL, log_every=5, lr=3e-3, warmup=2)
    tr = Trainer(cfg, "cpu", tmp_path)
    first = {k: float(v.detach()) for k, v in tr.losses(data).items()}
    tr.train(data)
    last = {k: float(v.detach()) for k, v in tr.losses(data).items()}
    assert last["ctc"] < first["ctc"] and last["proto"] < first["proto"]
    assert (tmp_path / "ckpt.pt").exists()
    tr2 = Trainer(TrainConfig(**{**cfg.__dict__, "steps": 27}), "cpu", tmp_path)
    tr2.train(data)
    assert tr2.step == 27 and len(tr2.history) >= len(tr.history)
    torch.testing.assert_close(tr2.table_emb.norm(dim=-1), torch.ones(39))


def test_label_delay_shifts_alignment_targets(tmp_path):
    ex = _examples(np.random.default_rng(1), 4)
    seen = {}
    for d in (0, 2):
        tr = Trainer(TrainConfig(batch=4, encoder=SMALL, label_delay=d), "cpu", tmp_path / str(d))
        tr._update_tables = lambda emb, logp, frames, d=d: seen.__setitem__(d, frames.clone())
        tr.losses(ex)
    assert (seen[0] >= 0).any()
    assert torch.equal(seen[2][:, 2:], seen[0][:, :-2]) and (seen[2][:, :2] == -1).all()


def test_rank_loss_pairs_positives_with_other_clips_confusables():
    logit = torch.tensor([2.0, 1.0, -1.0, 0.5, 3.0, 0.0])
    label = torch.tensor([1, 0, 0, 1, 0, 0])
    src = torch.tensor([0, 0, 0, 1, 1, 1])
    hard = torch.tensor([False, True, False, False, True, False])  # rows 1 and 4 are confusables
    # pairs (pos 0, hard 4) and (pos 3, hard 1); same-clip pairs and easy rows are left out
    want = (torch.nn.functional.softplus(torch.tensor(3.0 - 2.0)) + torch.nn.functional.softplus(torch.tensor(1.0 - 0.5))) / 2
    torch.testing.assert_close(rank_loss(logit, label, src, hard), want)


def test_rank_weight_adds_the_loss(tmp_path):
    ex = _examples(np.random.default_rng(2), 6)
    ls = Trainer(TrainConfig(batch=6, encoder=SMALL, rank_weight=0.5), "cpu", tmp_path).losses(ex)
    assert "rank" in ls and float(ls["rank"].detach()) > 0
    assert "rank" not in Trainer(TrainConfig(batch=6, encoder=SMALL), "cpu", tmp_path / "b").losses(ex)


def test_cli_export_from_checkpoint(tmp_path):
    from services.cli import main

    rng = np.random.default_rng(1)
    tr = Trainer(TrainConfig(steps=1, batch=4, encoder=SMALL), "cpu", tmp_path)
    tr.train(_examples(rng, 4))
    assert main(["kws", "export", "--ckpt", str(tmp_path / "ckpt.pt"), "--out", str(tmp_path / "m")]) == 0
    from edge.spotter import Spotter

    sp = Spotter.from_dir(tmp_path / "m")
    assert sp.encode(np.zeros(16000, np.float32))[0].shape == (49, 64)
