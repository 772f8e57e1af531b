"""Tokenizer of a Hugging Face model folder: tokenizer.json via `tokenizers`, chat template, EOS.

`Tokenizer.from_dir(path)` reads tokenizer.json (required), tokenizer_config.json (special
tokens, `add_bos_token`, `chat_template`), generation_config.json and config.json (EOS ids).
`IncrementalDetokenizer` turns a growing list of ids into text deltas for streaming without
splitting multi-byte characters or merging-space artefacts (the prefix/read-offset scheme).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer

# Used when the folder has no chat template: one "<|role|>\ncontent\n" block per turn.
FALLBACK_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def _token_text(v) -> str | None:
    if isinstance(v, dict):
        return v.get("content")
    return v


def _read_json(p: Path) -> dict:
    return json.loads(p.read_text()) if p.is_file() else {}


class Tokenizer:
    """encode / decode / apply_chat_template over a `tokenizers.Tokenizer`, with EOS handling."""

    def __init__(self, tok: _HFTokenizer, config: dict | None = None, extra_eos: list[int] | None = None):
        self.tok = tok
        cfg = config or {}
        self.bos_token = _token_text(cfg.get("bos_token"))
        self.eos_token = _token_text(cfg.get("eos_token"))
        self.bos_token_id = tok.token_to_id(self.bos_token) if self.bos_token else None
        eos = {tok.token_to_id(self.eos_token)} if self.eos_token else set()
        eos |= set(extra_eos or [])
        self.eos_token_ids: set[int] = {i for i in eos if i is not None}
        self.eos_token_id = tok.token_to_id(self.eos_token) if self.eos_token else (
            min(self.eos_token_ids) if self.eos_token_ids else None)
        # Does the post-processor add BOS by itself? If not, add_bos_token asks us to.
        probe = tok.encode("a", add_special_tokens=True).ids
        self._adds_bos = self.bos_token_id is not None and bool(probe) and probe[0] == self.bos_token_id
        self.add_bos = bool(cfg.get("add_bos_token", False)) and not self._adds_bos
        tmpl = cfg.get("chat_template")
        if isinstance(tmpl, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in tmpl}
            tmpl = named.get("default") or next(iter(named.values()), None)
        self.chat_template: str | None = tmpl
        self._compiled = None
        self.special_ids = set(tok.get_added_tokens_decoder().keys()) if hasattr(tok, "get_added_tokens_decoder") else set()

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Load from a Hugging Face model folder (needs tokenizer.json)."""
        path = Path(path)
        tj = path / "tokenizer.json"
        if not tj.is_file():
            raise FileNotFoundError(f"no tokenizer.json in {path.resolve()} (only fast tokenizers are supported)")
        cfg = _read_json(path / "tokenizer_config.json")
        if "chat_template" not in cfg and (path / "chat_template.jinja").is_file():
            cfg["chat_template"] = (path / "chat_template.jinja").read_text()
        extra: list[int] = []
        for name in ("generation_config.json", "config.json"):
            e = _read_json(path / name).get("eos_token_id")
            extra += e if isinstance(e, list) else ([e] if isinstance(e, int) else [])
        return cls(_HFTokenizer.from_file(str(tj)), cfg, extra)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; BOS is added once (not again when the text already starts with it)."""
        starts_with_bos = bool(self.bos_token) and text.startswith(self.bos_token)
        ids = self.tok.encode(text, add_special_tokens=add_special_tokens and not starts_with_bos).ids
        if add_special_tokens and self.add_bos and not starts_with_bos:
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of `ids` (special tokens dropped unless asked)."""
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            tokenize: bool = False):
        """Render `messages` ([{"role", "content"}]) with the folder's chat template (or a simple one).

        Returns the prompt text, or its ids (encoded without adding BOS again) when `tokenize`.
        """
        if self._compiled is None:
            import jinja2
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(msg):
                raise jinja2.exceptions.TemplateError(msg)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = raise_exception
            self._compiled = env.from_string(self.chat_template or FALLBACK_CHAT_TEMPLATE)
        text = self._compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     bos_token=self.bos_token or "", eos_token=self.eos_token or "")
        if tokenize:
            return self.tok.encode(text, add_special_tokens=False).ids
        return text


class IncrementalDetokenizer:
    """Text deltas for a growing id list: `add(new_ids) -> str` returns only the new, complete text."""

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int] | None = None, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        # a few prompt ids as context so the first generated token decodes with its leading space right
        self.ids: list[int] = list(prompt_ids[-4:]) if prompt_ids else []
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""

    def add(self, new_ids: list[int]) -> str:
        """Append ids; return the text they complete (may be '' while a character is incomplete)."""
        self.ids.extend(int(i) for i in new_ids)
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset], self.skip)
        full = self.tokenizer.decode(self.ids[self.prefix_offset:], self.skip)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            delta = full[len(prefix):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            self.text += delta
            return delta
        return ""
