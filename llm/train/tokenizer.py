"""The byte-level BPE tokenizer of the default models and its chat template."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

PAD, BOS, EOT = "<|pad|>", "<|bos|>", "<|endoftext|>"
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = [PAD, BOS, EOT, SYSTEM, USER, ASSISTANT, END]

# One turn is "<|role|>\n{content}<|end|>\n"; generation stops at <|end|>.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8192) -> Tokenizer:
    """Train a byte-level BPE on `texts`; digits are split one per token so numbers copy well.

    Args:
        texts: training documents.
        vocab_size: total vocabulary size, special tokens included.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def render_chat(messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """The chat template in plain Python (identical output to CHAT_TEMPLATE), used in training."""
    out = BOS + "".join(f"<|{m['role']}|>\n{m['content']}{END}\n" for m in messages)
    return out + (f"{ASSISTANT}\n" if add_generation_prompt else "")


def save_hf_tokenizer(tok: Tokenizer, out_dir: str | Path) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json (transformers format)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    added = {str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                       "single_word": False, "special": True} for t in SPECIAL_TOKENS}
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS, "eos_token": END, "pad_token": PAD, "unk_token": None,
        "additional_special_tokens": [EOT, SYSTEM, USER, ASSISTANT],
        "added_tokens_decoder": added,
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": 8192,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1))
    smap = {"bos_token": BOS, "eos_token": END, "pad_token": PAD, "additional_special_tokens": [EOT, SYSTEM, USER,
                                                                                               ASSISTANT]}
    (out / "special_tokens_map.json").write_text(json.dumps(smap, indent=1))
