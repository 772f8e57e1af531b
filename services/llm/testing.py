"""A tiny random-weight Llama checkpoint (HF folder) for service and worker tests and smoke runs.

Made with transformers' own `LlamaForCausalLM.save_pretrained` and a byte-level BPE trained with
`tokenizers`, so it is a standard folder that `llm.Engine.from_pretrained` loads like any other.
The EOS row of the LM head is zeroed: with random weights some other logit is almost surely
positive, so greedy generations run to max_tokens and tests get deterministic lengths.
"""

from __future__ import annotations

import json
from pathlib import Path

from services.testing import ServiceProcess, grpc_serving

__all__ = ["CHAT_TEMPLATE", "ServiceProcess", "grpc_serving", "make_tiny_llama", "start_llm", "start_worker"]

_TEXT = ("turn the lights on in the kitchen please. stop the music. what time is it? "
         "the quick brown fox jumps over the lazy dog. hello world, wakeline answers in one sentence. ")
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


def make_tiny_llama(out: str | Path, *, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                    max_positions: int = 512, vocab: int = 512, seed: int = 0, intermediate: int | None = None,
                    model_vocab: int | None = None, dtype: str | None = None, device: str = "cpu") -> Path:
    """Write a random-weight Llama-shaped checkpoint with tokenizer and chat template to `out`; returns it.

    `vocab` bounds the BPE tokenizer (trained on a few sentences, so it stays small); `model_vocab`
    sets the embedding size when a realistic shape is wanted (ids past the tokenizer decode to "").
    `dtype` ("bfloat16", ...) is the stored dtype.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([_TEXT] * 20, trainer)
    tok.save(str(out / "tokenizer.json"))
    n_vocab = tok.get_vocab_size()
    eos = tok.token_to_id("</s>")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "add_bos_token": False,
        "chat_template": CHAT_TEMPLATE}))
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=max(n_vocab, model_vocab or 0), hidden_size=hidden,
                      intermediate_size=intermediate or hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=max_positions, bos_token_id=tok.token_to_id("<s>"),
                      eos_token_id=eos, pad_token_id=0, tie_word_embeddings=False, rope_theta=10000.0)
    with torch.device(device):  # random init of a 1B-shaped model is much faster on a GPU
        model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight[eos].zero_()
    if dtype:
        model = model.to(getattr(torch, dtype))
    model.save_pretrained(out, safe_serialization=True)
    return out


def start_llm(model: str | Path, port: int, env: dict | None = None, timeout: float = 180.0) -> ServiceProcess:
    """`wakeline llm serve` on 127.0.0.1:`port`, returned once SERVING."""
    e = {"WAKELINE_LLM_MODEL": str(model), "WAKELINE_LLM_PORT": str(port), "WAKELINE_LLM_HOST": "127.0.0.1",
         "WAKELINE_LLM_GRACE_S": "1", **(env or {})}
    p = ServiceProcess("llm", ["llm", "serve"], e)
    return p.start(ready=lambda: grpc_serving(f"127.0.0.1:{port}", "wakeline.v1.LlmService"), timeout=timeout)


def start_worker(bus_url: str, llm_target: str, name: str, env: dict | None = None,
                 timeout: float = 120.0) -> ServiceProcess:
    """`wakeline worker run` (gRPC backend) as consumer `name`, returned once consuming."""
    e = {"WAKELINE_WORKER_BUS_URL": bus_url, "WAKELINE_WORKER_LLM_TARGET": llm_target,
         "WAKELINE_WORKER_BACKEND": "grpc", "WAKELINE_WORKER_CONSUMER": name, **(env or {})}
    return ServiceProcess(name, ["worker", "run"], e).start(ready_line="worker running", timeout=timeout)
