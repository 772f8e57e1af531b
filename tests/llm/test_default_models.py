"""The shipped default LLMs: standard Hugging Face folders, within budget, and they answer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llm.train.synth import (  # noqa: E402
    SYSTEM_PROMPT,
    RetrievalTask,
    format_keyword_event,
    keyword_event_messages,
    keyword_event_sample,
)
from llm.train.tokenizer import CHAT_TEMPLATE, END, SPECIAL_TOKENS, render_chat  # noqa: E402

ROOT = Path(__file__).resolve().parents[2] / "models" / "llm"
KINDS = {"dense": "LlamaForCausalLM", "moe": "MixtralForCausalLM"}
REQUIRED = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"]
BUDGET_BYTES = 25 * 10**6


def _dir(kind: str) -> Path:
    d = ROOT / kind
    if not (d / "config.json").exists():
        pytest.skip(f"{d} is not shipped in this checkout")
    return d


@pytest.fixture(scope="module")
def tok():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(_dir("dense") / "tokenizer.json"))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_folder_is_a_standard_checkpoint(kind):
    d = _dir(kind)
    for f in REQUIRED:
        assert (d / f).is_file(), f"{d / f} missing"
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["architectures"] == [KINDS[kind]]
    assert cfg["max_position_embeddings"] == 8192
    theta = cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"]
    assert theta >= 100_000, "rope_theta too small for 8k positions"
    tcfg = json.loads((d / "tokenizer_config.json").read_text())
    assert tcfg["chat_template"] == CHAT_TEMPLATE and tcfg["eos_token"] == END
    if kind == "moe":
        assert cfg["num_local_experts"] == 8 and cfg["num_experts_per_tok"] == 2


def test_models_fit_the_size_budget():
    _dir("dense")
    total = sum(f.stat().st_size for f in ROOT.rglob("*") if f.is_file())
    assert total <= BUDGET_BYTES, f"models/llm holds {total / 1e6:.2f} MB > 25 MB"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_loads_with_transformers_and_runs(kind):
    d = _dir(kind)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32).eval()
    assert type(model).__name__ == KINDS[kind]
    n = sum(p.numel() for p in model.parameters())
    assert 1e6 < n < 12.5e6
    ids = torch.randint(0, model.config.vocab_size, (2, 37), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (2, 37, model.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_hf_chat_template_matches_training_format():
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(_dir("dense")))
    msgs = [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": format_keyword_event("lights on", "kitchen", None, "07:42")}]
    text = hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == render_chat(msgs, add_generation_prompt=True)
    assert hf_tok.eos_token == END


def test_dense_answers_a_keyword_event(tok):
    d = _dir("dense")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32).eval()
    msgs = [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": format_keyword_event("lights on", "kitchen", None, "07:42")}]
    ids = torch.tensor([tok.encode(render_chat(msgs, add_generation_prompt=True)).ids])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24)
    answer = tok.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True).strip()
    assert answer, "empty answer"
    assert re.search(r"[A-Za-z]{2,}", answer), f"no words in {answer!r}"


def test_tokenizer_special_tokens_and_digits(tok):
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    pieces = tok.encode("The code is 4821.").tokens
    assert [p for p in pieces if p.isdigit()] == ["4", "8", "2", "1"]


def test_retrieval_sample_is_deterministic_and_answerable(tok):
    filler = np.asarray(tok.encode("In the beginning was the Word. " * 400).ids, dtype=np.uint16)
    task = RetrievalTask(tok, filler)
    a = task.sample(np.random.default_rng(7), 1024, n_facts=5, n_questions=2)
    b = task.sample(np.random.default_rng(7), 1024, n_facts=5, n_questions=2)
    c = task.sample(np.random.default_rng(8), 1024, n_facts=5, n_questions=2)
    assert a.ids == b.ids and a.ids != c.ids
    assert abs(len(a.ids) - 1024) <= 2
    text = tok.decode(a.ids, skip_special_tokens=False)
    for q in re.findall(r"What is the code of the ([a-z]+ [a-z]+)\?", text):
        code = re.search(rf"The code of the {q} is (\d{{4}})\.", text).group(1)
        assert f"{q}?<|end|>\n<|assistant|>\n{code}<|end|>" in text
    answer = "".join(tok.id_to_token(a.ids[p]) for p in a.answer_pos)
    assert re.fullmatch(r"(\d{4}<\|end\|>){2}", answer)


def test_keyword_event_generator_is_sensible(tok):
    rng = np.random.default_rng(3)
    for _ in range(50):
        msgs = keyword_event_messages(rng)
        assert msgs[-1]["role"] == "assistant" and msgs[-1]["content"].endswith((".", "?", "!"))
        kw = re.search(r"(?:said '|keyword[ =]'?)([^';]+)", msgs[-2]["content"], re.I).group(1)
        assert kw.strip()
    s1 = keyword_event_sample(tok, np.random.default_rng(5))
    s2 = keyword_event_sample(tok, np.random.default_rng(5))
    assert s1.ids == s2.ids
    assert tok.decode([s1.ids[p] for p in s1.answer_pos], skip_special_tokens=False).endswith(END)


def test_warm_start_copies_dense_attention_into_moe(tok):
    from safetensors.torch import load_file

    from llm.train.models import build
    from llm.train.trainer import warm_start

    d = _dir("dense")
    torch.manual_seed(0)
    moe = build("moe", tok, layers=6, ffn=64)
    copied = warm_start(moe, d)
    dense = load_file(str(d / "model.safetensors"))
    sd = moe.state_dict()
    assert "model.layers.5.self_attn.q_proj.weight" in copied and "model.embed_tokens.weight" in copied
    assert not any("experts" in k or "gate.weight" in k for k in copied)
    torch.testing.assert_close(sd["model.layers.3.self_attn.o_proj.weight"],
                               dense["model.layers.3.self_attn.o_proj.weight"].float())
    key = "model.layers.0.mlp.experts.gate_up_proj"
    if key in sd:  # transformers 5 fused expert layout: expert 1 holds the second slice of neurons
        f = sd[key].shape[1] // 2
        step = dense["model.layers.0.mlp.gate_proj.weight"].shape[0] // sd[key].shape[0]
        torch.testing.assert_close(sd[key][1, :f], dense["model.layers.0.mlp.gate_proj.weight"][step:step + f].float())
