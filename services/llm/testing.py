"""A tiny random-weight Llama checkpoint (HF folder) for service and worker tests and smoke runs.

Made with transformers' own `LlamaForCausalLM.save_pretrained` and a byte-level BPE trained with
`tokenizers`, so it is a standard folder that `llm.Engine.from_pretrained` loads like any other.
The EOS row of the LM head is zeroed: with random weights some other logit is almost surely
positive, so greedy generations run to max_tokens and tests get deterministic lengths.
"""

from __future__ import annotations

import json
from pathlib import Path

_TEXT = ("turn the lights on in the kitchen please. stop the music. what time is it? "
         "the quick brown fox jumps over the lazy dog. hello world, wakeline answers in one sentence. ")
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


def make_tiny_llama(out: str | Path, *, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                    max_positions: int = 512, vocab: int = 512, seed: int = 0) -> Path:
    """Write a tiny Llama-shaped checkpoint with tokenizer and chat template to `out`; returns it."""
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
    cfg = LlamaConfig(vocab_size=n_vocab, hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=max_positions, bos_token_id=tok.token_to_id("<s>"),
                      eos_token_id=eos, pad_token_id=0, tie_word_embeddings=False, rope_theta=10000.0)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight[eos].zero_()
    model.save_pretrained(out, safe_serialization=True)
    return out
