"""Small random-weight Hugging Face checkpoints (made with transformers) and a tiny trained BPE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXT = (
    "turn the lights on in the kitchen. stop the music. what time is it? set a timer for ten minutes. "
    "open the door. the quick brown fox jumps over the lazy dog. lights off in the bedroom please. "
    "play some jazz in the living room. how warm is it outside? remind me to call mum tomorrow. "
) * 20
SPECIALS = ["<|pad|>", "<|bos|>", "<|end|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
COMMON = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
              pad_token_id=0)
ARCHS = ["llama", "qwen3", "mixtral", "olmoe", "qwen2_moe", "qwen2", "qwen3_moe"]


def hf_config(arch: str, vocab: int):
    """A tiny transformers config of each supported family."""
    c = dict(COMMON, vocab_size=vocab)
    if arch == "llama":
        return transformers.LlamaConfig(**c, tie_word_embeddings=True, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    if arch == "qwen3":
        return transformers.Qwen3Config(**c, head_dim=32, tie_word_embeddings=False)
    if arch == "mixtral":
        return transformers.MixtralConfig(**c, num_local_experts=4, num_experts_per_tok=2)
    if arch == "olmoe":
        return transformers.OlmoeConfig(**c, num_experts=8, num_experts_per_tok=2)
    if arch == "qwen2_moe":
        return transformers.Qwen2MoeConfig(**c, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                                           shared_expert_intermediate_size=48, decoder_sparse_step=1,
                                           mlp_only_layers=[1])
    if arch == "qwen2":  # q/k/v bias
        return transformers.Qwen2Config(**c, tie_word_embeddings=False)
    if arch == "qwen3_moe":
        return transformers.Qwen3MoeConfig(**c, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                                           norm_topk_prob=True)
    raise ValueError(arch)


def train_tokenizer(out: Path) -> None:
    """A ~300-token byte-level BPE with the special tokens, saved HF-style."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT], trainer)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|bos|>", "eos_token": "<|end|>", "pad_token": "<|pad|>", "add_bos_token": True,
        "chat_template": CHAT_TEMPLATE}))


def make_checkpoint(arch: str, out: Path, seed: int = 0, shard: str | None = None):
    """Random weights with a wide spread (so greedy choices are far from ties), saved with tokenizer."""
    train_tokenizer(out)
    vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    n_vocab = len(vocab) + len(SPECIALS)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(arch, n_vocab)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.1)
            else:
                p.normal_(0.0, 0.15)
    kw = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(out, **kw)
    return model


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """arch -> (folder, transformers model in fp32 eval mode)."""
    root = tmp_path_factory.mktemp("llm_ckpt")
    return {a: (root / a, make_checkpoint(a, root / a, seed=i)) for i, a in enumerate(ARCHS)}


@pytest.fixture(scope="session")
def llama_dir(checkpoints):
    return checkpoints["llama"][0]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models on a shared 2-core box: OpenMP threads spin against other jobs (30x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
