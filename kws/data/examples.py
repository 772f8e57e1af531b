"""Example makers: one deterministic function per item kind, usable on the fly in a training loop.

``Context`` holds what a worker process builds once (phonemizer, lexicon, augmenter, noise);
each maker takes ``(ctx, rng)`` and returns audio plus JSON-ready labels, so the dataset build
(``kws.data.build``) and a training script's DataLoader workers share the same code::

    ctx = Context(split="train", seed=0)
    utt, row = make_train_example(ctx, np.random.default_rng([seed, index]))
"""

from __future__ import annotations

import numpy as np

from kws.data import synth
from kws.data import words as W
from kws.data.augment import Augmenter, apply_gain, load_noise_bank, rms
from kws.data.lexicon import Lexicon
from kws.data.utterance import SAMPLE_RATE, Utterance


class Context:
    """Per-process state for one split (``train``, ``dev``, ``test``): voices and phrases of that split.

    Args:
        split: which voices and which phrases to draw from.
        seed: seeds the simulated rooms.
        engines: synthesis engines to use.
        fetch_noise: build the real-noise bank if it is missing (needs the Debian mirror).
    """

    def __init__(self, split: str, seed: int = 0, engines: tuple[str, ...] = ("espeak", "flite"),
                 fetch_noise: bool = False):
        self.split = split
        self.engines = engines
        self.lexicon = Lexicon()
        self.ph = self.lexicon.ph
        self.phrases = self.lexicon.split(split)
        self.noise = load_noise_bank(fetch=fetch_noise)
        self.aug = Augmenter(seed=seed, noise=self.noise)
        self._hard: dict[str, list[str]] = {}
        self._babble: list[np.ndarray] = []

    def hard_negative(self, text: str, rng: np.random.Generator) -> str:
        """A hard negative of ``text`` (the candidates are cached per phrase)."""
        if text not in self._hard:
            self._hard[text] = self.lexicon.hard_negatives(text, np.random.default_rng(0), k=4)
        cands = self._hard[text]
        if not cands:
            raise ValueError(f"no hard negative for {text!r}")
        return cands[int(rng.integers(len(cands)))]

    def speak(self, text: str, rng: np.random.Generator, voice: str | None = None) -> Utterance:
        """Synthesize ``text`` with random voice parameters of the split (or a fixed voice)."""
        params = synth.random_params(rng, self.split, engines=self.engines)
        if voice:
            params["voice"] = voice
        utt = synth.synthesize(text, phonemizer=self.ph, **params)
        if len(self._babble) < 64:  # a pool of earlier speech for babble noise
            self._babble.append(utt.audio)
        return utt

    def babble_pool(self) -> list[np.ndarray]:
        return self._babble

    def filler(self, rng: np.random.Generator, n_words: int, avoid: list[str] = ()) -> str:
        """Random English-like words (not containing any ``avoid`` phrase as a word sequence)."""
        vocab = W.EVERYDAY + W.SENTENCE_GLUE * 3
        for _ in range(50):
            ws = [vocab[int(i)] for i in rng.integers(len(vocab), size=n_words)]
            text = " ".join(ws)
            if not any(contains_phrase(self.ph.normalize(text), self.ph.normalize(a)) for a in avoid):
                return text
        raise RuntimeError("filler: could not avoid the keywords")


def contains_phrase(words: list[str], phrase: list[str]) -> bool:
    """Whether ``phrase`` occurs as a contiguous word sequence in ``words``."""
    k = len(phrase)
    return any(words[i:i + k] == phrase for i in range(len(words) - k + 1))


def keyword_in_context(ctx: Context, rng: np.random.Generator, keyword: str,
                       context_prob: float = 0.5) -> tuple[str, int, int]:
    """Text that contains ``keyword``, alone or inside filler words; ``(text, first_word, last_word)``."""
    kw_words = ctx.ph.normalize(keyword)
    if rng.random() >= context_prob:
        return keyword, 0, len(kw_words) - 1
    before = int(rng.integers(0, 4))
    after = int(rng.integers(0, 4))
    pre = ctx.filler(rng, before, avoid=[keyword]) if before else ""
    post = ctx.filler(rng, after, avoid=[keyword]) if after else ""
    text = " ".join(t for t in (pre, keyword, post) if t)
    first = len(ctx.ph.normalize(pre)) if pre else 0
    return text, first, first + len(kw_words) - 1


def make_train_example(ctx: Context, rng: np.random.Generator, background_prob: float = 0.05
                       ) -> tuple[Utterance | None, dict]:
    """One augmented training utterance and its labels (row without the audio path).

    The row holds text, words, phonemes, word and phoneme times, the keyword phrase with its
    word span and end time, and one hard and one easy negative text. With ``background_prob``
    the item is background only (noise or babble, no speech): ``keyword`` is null.
    """
    if rng.random() < background_prob:
        n = int(rng.uniform(1.0, 3.0) * SAMPLE_RATE)
        pool = ctx.babble_pool()
        if pool and rng.random() < 0.3:
            from kws.data.augment import make_babble

            x = make_babble(rng, pool, n)
        else:
            x = ctx.aug.noise_clip(rng, n)
        x = apply_gain(x, float(rng.uniform(-25.0, 0.0)))
        return None, {"text": "", "words": [], "phonemes": [], "word_times": [], "phone_times": [],
                      "keyword": None, "duration": round(n / SAMPLE_RATE, 4), "background": True,
                      "_audio": x}
    keyword = ctx.phrases[int(rng.integers(len(ctx.phrases)))]
    text, first, last = keyword_in_context(ctx, rng, keyword, context_prob=0.4)
    utt = ctx.aug(ctx.speak(text, rng), rng, babble=ctx.babble_pool())
    row = utt.labels()
    start, end = utt.span(first, last)
    row.update({"keyword": keyword, "keyword_words": [first, last], "keyword_start": start, "keyword_end": end,
                "hard_negative": ctx.hard_negative(keyword, rng),
                "easy_negative": ctx.lexicon.easy_negative(keyword, rng, ctx.phrases)})
    return utt, row


def make_pair_clip(ctx: Context, rng: np.random.Generator) -> tuple[Utterance, list[dict]]:
    """One spoken phrase and its three trials: positive, hard negative and easy negative text."""
    keyword = ctx.phrases[int(rng.integers(len(ctx.phrases)))]
    utt = ctx.aug(ctx.speak(keyword, rng), rng, babble=ctx.babble_pool())
    trials = [
        {"text": keyword, "label": 1, "kind": "positive"},
        {"text": ctx.hard_negative(keyword, rng), "label": 0, "kind": "hard"},
        {"text": ctx.lexicon.easy_negative(keyword, rng, ctx.phrases), "label": 0, "kind": "easy"},
    ]
    return utt, trials


def make_stream(ctx: Context, rng: np.random.Generator, seconds: float = 240.0, n_keywords: int = 3,
                event_every: float = 16.0) -> tuple[np.ndarray, dict]:
    """A long recording: keywords (alone and in context), confusable phrases, other speech,
    noise bursts and silence, in one simulated room over continuous background noise.

    Returns ``(audio, row)``; ``row`` has ``keywords`` and ``events`` (seconds).
    """
    keywords: list[str] = []
    while len(keywords) < n_keywords:
        k = ctx.phrases[int(rng.integers(len(ctx.phrases)))]
        if k not in keywords and len(ctx.ph.normalize(k)) >= (1 if rng.random() < 0.2 else 2):
            keywords.append(k)
    speakers = [synth.random_params(rng, ctx.split, engines=ctx.engines)["voice"]
                for _ in range(int(rng.integers(2, 5)))]
    n = int(seconds * SAMPLE_RATE)
    speech = np.zeros(n, np.float32)
    events = []
    t = float(rng.uniform(0.5, 2.0))
    p_event = min(0.9, 4.0 / event_every)  # segments average ~4 s including gaps
    while True:
        r = rng.random()
        voice = speakers[int(rng.integers(len(speakers)))]
        if r < p_event:
            kw = keywords[int(rng.integers(len(keywords)))]
            text, first, last = keyword_in_context(ctx, rng, kw, context_prob=0.5)
        elif r < p_event + 0.15:
            kw, text = None, ctx.hard_negative(keywords[int(rng.integers(len(keywords)))], rng)
        elif r < p_event + 0.25:
            kw, text = None, None  # a noise burst
        else:
            kw, text = None, ctx.filler(rng, int(rng.integers(3, 13)), avoid=keywords)
        if text is None:
            seg = ctx.aug.noise_clip(rng, int(rng.uniform(0.5, 3.0) * SAMPLE_RATE)) * 0.1
            utt = None
        else:
            utt = ctx.speak(text, rng, voice=voice)
            seg = utt.audio * (10 ** (float(rng.uniform(-26, -16)) / 20) / (rms(utt.audio) + 1e-9))
        start = int(t * SAMPLE_RATE)
        if start + len(seg) >= n - SAMPLE_RATE // 2:
            break
        speech[start:start + len(seg)] += seg
        if kw is not None:
            s, e = utt.span(first, last)
            events.append({"keyword": kw, "start": round(t + s, 3), "end": round(t + e, 3)})
        t += len(seg) / SAMPLE_RATE + float(rng.choice([rng.uniform(0.2, 1.0), rng.uniform(1.0, 4.0)]))
    if rng.random() < 0.7:
        speech = ctx.aug.reverb(rng, speech)
    level = 10 ** (-21 / 20)  # the speech level set above, on average
    snr = float(rng.uniform(5.0, 25.0))
    noise = ctx.aug.noise_clip(rng, n) * (level / 10 ** (snr / 20))
    audio = np.clip(speech + noise, -1.0, 1.0).astype(np.float32)
    return audio, {"keywords": keywords, "events": events, "snr_db": round(snr, 1), "speakers": speakers}

