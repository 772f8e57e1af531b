"""Loading HF folders: shards, dtypes, config variants, clear errors; the tokenizer wrapper."""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")

from llm.loader import CheckpointError, load_model  # noqa: E402
from llm.model import ModelArgs, UnsupportedModelError  # noqa: E402
from llm.tokenizer import IncrementalDetokenizer, Tokenizer  # noqa: E402
from tests.llm.conftest import make_checkpoint  # noqa: E402


def logits(model, ids):
    model.setup_caches(1, 64)
    with torch.no_grad():
        return model(ids, torch.arange(ids.shape[1])[None], fresh=True)


def copy_ckpt(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_sharded_checkpoint_loads_the_same_model(tmp_path, checkpoints):
    src, _ = checkpoints["mixtral"]
    sharded = tmp_path / "sharded"
    make_checkpoint("mixtral", sharded, seed=2, shard="60KB")  # seed 2 = the fixture's mixtral weights
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 2
    a, _ = load_model(src)
    b, _ = load_model(sharded)
    ids = torch.randint(3, 100, (1, 9))
    torch.testing.assert_close(logits(a, ids), logits(b, ids), rtol=0, atol=0)
    assert not any(p.is_meta for p in b.parameters())
    assert b.layers[0].feed_forward.experts.w1.shape == (4, 96, 64)


def test_tied_embeddings_share_one_tensor(llama_dir):
    model, args = load_model(llama_dir)
    assert args.tie_word_embeddings
    assert model.output.weight.data_ptr() == model.tok_embeddings.weight.data_ptr()


@pytest.mark.parametrize("dtype,expect", [("bf16", torch.bfloat16), ("float16", torch.float16),
                                          (torch.float32, torch.float32), (None, torch.float32)])
def test_dtypes(llama_dir, dtype, expect):
    model, _ = load_model(llama_dir, dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {expect}


def test_bad_dtype_is_refused(llama_dir):
    with pytest.raises(CheckpointError, match="dtype"):
        load_model(llama_dir, dtype="int8")


def test_missing_files_say_what_is_missing(tmp_path, llama_dir):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)
    d = copy_ckpt(llama_dir, tmp_path / "noweights")
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_model(d)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(FileNotFoundError, match="missing"):
        load_model(d)


def test_unsupported_architectures_and_options(tmp_path, llama_dir):
    cfg = json.loads((llama_dir / "config.json").read_text())
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        ModelArgs.from_hf_config({**cfg, "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    with pytest.raises(UnsupportedModelError, match="yarn"):
        ModelArgs.from_hf_config({**cfg, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4}})
    with pytest.raises(UnsupportedModelError, match="activation"):
        ModelArgs.from_hf_config({**cfg, "hidden_act": "gelu"})


def test_shape_mismatch_names_the_tensor(tmp_path, llama_dir):
    d = copy_ckpt(llama_dir, tmp_path / "bad")
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 80
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"shape mismatch for layers\.\d\.feed_forward\.w\d\.weight"):
        load_model(d)


def test_integer_and_unknown_tensors_are_refused(tmp_path, llama_dir):
    from safetensors.torch import load_file, save_file

    d = copy_ckpt(llama_dir, tmp_path / "int")
    sd = load_file(d / "model.safetensors")
    sd["model.norm.weight"] = sd["model.norm.weight"].to(torch.int8)
    save_file(sd, d / "model.safetensors")
    with pytest.raises(CheckpointError, match="int8"):
        load_model(d)
    sd = load_file(llama_dir / "model.safetensors")
    sd["model.layers.0.self_attn.rel_pos.weight"] = torch.zeros(3)
    save_file(sd, d / "model.safetensors")
    with pytest.raises(CheckpointError, match="no place"):
        load_model(d)


def test_old_style_rope_config_parses_like_the_new_one(llama_dir):
    cfg = json.loads((llama_dir / "config.json").read_text())
    new = ModelArgs.from_hf_config(cfg)
    rope = dict(cfg.pop("rope_parameters"))
    old = ModelArgs.from_hf_config({**cfg, "rope_theta": rope.pop("rope_theta"), "rope_scaling": rope})
    assert old == new and new.rope_scaling["rope_type"] == "llama3" and new.rope_theta == 500000.0


def test_tokenizer_bos_eos_and_chat_template(llama_dir):
    tok = Tokenizer.from_dir(llama_dir)
    ids = tok.encode("turn the lights on")
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.decode(ids) == "turn the lights on"
    assert tok.encode("hi", add_special_tokens=False)[0] != tok.bos_token_id
    assert tok.eos_token_id == tok.tok.token_to_id("<|end|>") and 2 in tok.eos_token_ids
    text = tok.apply_chat_template([{"role": "user", "content": "lights on"}])
    assert text == "<|bos|><|user|>\nlights on<|end|>\n<|assistant|>\n"
    ids = tok.encode(text)  # the rendered BOS is not doubled
    assert ids.count(tok.bos_token_id) == 1
    assert tok.apply_chat_template([{"role": "user", "content": "lights on"}], tokenize=True) == ids


def test_fallback_chat_template_without_one(tmp_path, llama_dir):
    d = copy_ckpt(llama_dir, tmp_path / "notmpl")
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    text = Tokenizer.from_dir(d).apply_chat_template([{"role": "user", "content": "hello"}])
    assert "hello" in text and text.endswith("<|assistant|>\n")


def test_incremental_detokenizer_streams_exactly_the_full_text(llama_dir):
    tok = Tokenizer.from_dir(llama_dir)
    prompt = tok.encode("open the door")
    for text in ["the café is naïve ☕ — turn the lights on", " stop  the music.\n ok", "日本語 text"]:
        ids = tok.encode(text, add_special_tokens=False)
        det = IncrementalDetokenizer(tok, prompt)
        deltas = [det.add([i]) for i in ids]
        assert "".join(deltas) == tok.decode(ids) == det.text
        assert not any("\ufffd" in d for d in deltas)


def test_sliding_window_caps_the_engine_context(llama_dir):
    from llm.engine import Engine
    from llm.loader import load_config

    cfg = load_config(llama_dir)
    assert ModelArgs.from_hf_config({**cfg, "architectures": ["MistralForCausalLM"], "sliding_window": 64}).sliding_window == 64
    assert ModelArgs.from_hf_config({**cfg, "architectures": ["Qwen2ForCausalLM"], "sliding_window": 64,
                                     "use_sliding_window": False}).sliding_window is None
    model, _ = load_model(llama_dir)
    model.args.sliding_window = 48
    assert Engine(model, None, max_context=400).max_context == 48
