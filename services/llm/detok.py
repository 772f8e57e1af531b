"""Incremental detokenization and stop strings for streamed generations.

Byte-level BPE tokens do not map one-to-one to characters: a multi-byte character can span
tokens, and some tokenizers merge spaces across token boundaries. So the text of token i is the
difference between decoding the window since the previous emission and the same window without it, and a
delta that ends in U+FFFD (an incomplete UTF-8 sequence) is held back until the next token
completes it (the scheme of vLLM and HF TGI).
"""

from __future__ import annotations

_REPLACEMENT = "\ufffd"


def _decoder(tokenizer):
    """A `decode(ids) -> str` that skips special tokens when the tokenizer supports it."""
    try:
        tokenizer.decode([], skip_special_tokens=True)
    except TypeError:
        return tokenizer.decode
    except Exception:  # some tokenizers refuse an empty list; the keyword is what matters
        pass
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas; applies stop strings.

    Args:
        tokenizer: anything with `decode(list[int]) -> str`.
        stop: strings that end the generation; the text returned stops just before the first one.
    """

    def __init__(self, tokenizer, stop: list[str] | tuple[str, ...] = ()) -> None:
        self._decode = _decoder(tokenizer)
        self.ids: list[int] = []
        self._prefix = 0  # start of the window decoded as left context
        self._read = 0  # tokens whose text has been emitted
        self.text = ""  # all text emitted so far (and held-back stop candidates excluded)
        self._pending = ""  # text decoded but held back because it may be a stop-string prefix
        self.stop = [s for s in stop if s]
        self.stopped = False

    def push(self, new_ids: list[int]) -> str:
        """Add tokens; return the text that can be shown now (may be empty)."""
        if self.stopped or not new_ids:
            return ""
        self.ids.extend(int(i) for i in new_ids)
        prefix_text = self._decode(self.ids[self._prefix:self._read])
        full = self._decode(self.ids[self._prefix:])
        if len(full) <= len(prefix_text) or full.endswith(_REPLACEMENT):
            return ""
        delta = full[len(prefix_text):]
        self._prefix, self._read = self._read, len(self.ids)
        return self._apply_stop(delta)

    def flush(self) -> str:
        """At the end of a generation: release text held back (a possible stop prefix, partial UTF-8)."""
        if self.stopped:
            return ""
        tail = ""
        if self._read < len(self.ids):  # an incomplete UTF-8 sequence at the end: show it as decoded
            prefix_text = self._decode(self.ids[self._prefix:self._read])
            tail = self._decode(self.ids[self._prefix:])[len(prefix_text):]
            self._read = len(self.ids)
        tail = self._apply_stop(tail) if tail else ""
        if self.stopped:
            return tail
        out, self._pending = self._pending, ""
        self.text += out
        return tail + out

    def _apply_stop(self, delta: str) -> str:
        if not self.stop:
            self.text += delta
            return delta
        buf = self._pending + delta
        cut = min((i for i in (buf.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            self.text += buf[:cut]
            return buf[:cut]
        # hold back the longest tail that could still grow into a stop string
        hold = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        out, self._pending = buf[:len(buf) - hold], buf[len(buf) - hold:]
        self.text += out
        return out
