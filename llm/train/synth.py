"""Synthetic training tasks, deterministic from a seed.

(a) Long-context retrieval: corpus passages with embedded facts ("The code of the silver door is
    4821."), then questions about some of them in the chat format; answers are the 4 digits.
(b) Keyword events: what the edge reports ("The user said 'lights on' in the kitchen.") mapped to
    a short assistant answer ("Turning on the kitchen lights.").
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from llm.train.tokenizer import ASSISTANT, BOS, END, EOT, USER, render_chat

ADJECTIVES = [
    "silver", "golden", "red", "blue", "green", "black", "white", "copper", "iron", "wooden", "stone",
    "glass", "purple", "yellow", "hidden", "northern", "southern", "eastern", "western", "old", "new",
    "small", "great", "crystal", "marble", "bronze", "orange", "painted", "secret", "broken",
]
NOUNS = [
    "door", "gate", "box", "chest", "vault", "tower", "bridge", "garden", "window", "lock", "cellar",
    "library", "tunnel", "temple", "ship", "wagon", "well", "cabinet", "drawer", "safe", "locker",
    "barn", "church", "castle", "mill", "harbor", "station", "market", "school", "house",
]

SYSTEM_PROMPT = "You are Wakeline, a helpful voice assistant. Answer in one short sentence."
ROOMS = ["kitchen", "living room", "bedroom", "bathroom", "office", "hallway", "garage", "garden",
         "dining room", "kids' room", "basement", "study"]


@dataclass
class Sample:
    """Token ids of one training sequence and the positions whose targets are answer tokens."""

    ids: list[int]
    answer_pos: list[int]  # index i means: predicting ids[i] from ids[:i] is an answer step


class RetrievalTask:
    """Passages + facts + questions, built directly in token space from a filler token stream."""

    def __init__(self, tok, filler: np.ndarray):
        self.tok, self.filler = tok, filler
        self.enc = functools.lru_cache(maxsize=None)(lambda s: list(tok.encode(s).ids))
        self.digits = [tok.token_to_id(str(d)) for d in range(10)]
        nl2 = self.enc("\n\n")
        eot = tok.token_to_id(EOT)
        self.sep = nl2
        # Filler is corpus text: turn document separators into paragraph breaks.
        self.eot, self.nl_id = eot, (nl2[0] if len(nl2) == 1 else self.enc("\n")[0])
        self.head = [tok.token_to_id(BOS)] + self.enc(f"{USER}\n")
        self.tail_q = lambda q: self.enc(f"\n\nQuestion: {q}{END}\n{ASSISTANT}\n")
        self.end = self.enc(f"{END}\n")

    def _filler(self, rng: np.random.Generator, n: int) -> list[int]:
        start = int(rng.integers(0, len(self.filler) - n - 1))
        chunk = self.filler[start:start + n].copy()
        chunk[chunk == self.eot] = self.nl_id
        return chunk.tolist()

    def sample(self, rng: np.random.Generator, length: int, n_facts: int | None = None,
               n_questions: int | None = None) -> Sample:
        """One sequence of exactly `length` tokens (or slightly fewer for tiny lengths).

        Args:
            rng: source of all randomness (the sample is a function of its state).
            length: target total number of tokens.
            n_facts: facts hidden in the context (default grows with length).
            n_questions: questions asked, as follow-up turns (default 1-4).
        """
        if n_facts is None:
            n_facts = int(rng.integers(2, 3 + min(14, length // 512)))
        if n_questions is None:
            n_questions = int(rng.integers(1, min(4, n_facts) + 1))
        keys = rng.choice(len(ADJECTIVES) * len(NOUNS), size=n_facts, replace=False)
        facts = [(f"{ADJECTIVES[k // len(NOUNS)]} {NOUNS[k % len(NOUNS)]}", rng.integers(0, 10, size=4))
                 for k in keys]
        # Digits are single tokens (Digits pre-tokenizer), so cached pieces concatenate exactly.
        fact_ids = [self.enc(f"\n\nThe code of the {name} is ") + [self.digits[d] for d in code]
                    + self.enc(".\n\n") for name, code in facts]
        asked = rng.choice(n_facts, size=n_questions, replace=False)
        qa: list[tuple[list[int], list[int]]] = []
        for j, f in enumerate(asked):
            name, code = facts[f]
            q = f"What is the code of the {name}?"
            prompt = self.tail_q(q) if j == 0 else self.enc(f"{USER}\n{q}{END}\n{ASSISTANT}\n")
            qa.append((prompt, [self.digits[d] for d in code] + self.end))
        fixed = len(self.head) + sum(map(len, fact_ids)) + sum(len(p) + len(a) for p, a in qa)
        n_fill = max(n_facts + 1, length - fixed)
        cuts = np.sort(rng.choice(np.arange(1, n_fill), size=n_facts, replace=False))
        filler = self._filler(rng, n_fill)
        ids, prev = list(self.head), 0
        for cut, fid in zip(cuts, fact_ids, strict=True):
            ids += filler[prev:cut] + fid
            prev = int(cut)
        ids += filler[prev:]
        answer_pos = []
        for prompt, ans in qa:
            ids += prompt
            # The final newline after <|end|> is formatting, not part of the answer.
            answer_pos += list(range(len(ids), len(ids) + len(ans) - 1))
            ids += ans
        return Sample(ids, answer_pos)


# (keyword, answer template); {room} and {time} come from the event.
INTENTS = [
    ("lights on", "Turning on the {room} lights."), ("turn on the lights", "Turning on the {room} lights."),
    ("lights off", "Turning off the {room} lights."), ("turn off the lights", "Turning off the {room} lights."),
    ("play music", "Playing music in the {room}."), ("stop music", "Stopping the music in the {room}."),
    ("pause", "Pausing playback."), ("next song", "Skipping to the next song."),
    ("volume up", "Turning the volume up."), ("volume down", "Turning the volume down."),
    ("what time is it", "It is {time}."), ("good morning", "Good morning! It is {time}."),
    ("good night", "Good night. Turning off the {room} lights."),
    ("set a timer", "Sure, how long should the timer run?"), ("stop", "Okay, stopping."),
    ("cancel", "Okay, cancelled."), ("open the door", "Opening the {room} door."),
    ("close the door", "Closing the {room} door."), ("open the blinds", "Opening the {room} blinds."),
    ("close the blinds", "Closing the {room} blinds."), ("warmer", "Raising the {room} temperature."),
    ("colder", "Lowering the {room} temperature."), ("hey wakeline", "Yes? How can I help?"),
    ("help", "You can ask me to switch lights, play music, set timers or tell the time."),
    ("thank you", "You are welcome."), ("call mom", "Calling Mom."), ("start the fan", "Starting the {room} fan."),
    ("stop the fan", "Stopping the {room} fan."), ("lock the door", "Locking the {room} door."),
    ("make coffee", "Starting the coffee machine."),
]
UNKNOWN_WORDS = ["zorblax", "banana mode", "purple rain", "launch sequence", "red alert", "open sesame",
                 "abracadabra", "party time", "movie night", "wake up", "do the dishes", "feed the cat"]
UNKNOWN_ANSWER = "I heard '{kw}' in the {room}, but I do not know that command yet."


def format_keyword_event(keyword: str, room: str | None = None, device: str | None = None,
                         time: str | None = None) -> str:
    """The canonical user message for a keyword event (what workers should send to the model).

    Args:
        keyword: the detected keyword text.
        room: the room attribute of the device, if known.
        device: the device id, if known.
        time: local time as "HH:MM", if known.
    """
    s = f"The user said '{keyword}'"
    s += f" in the {room}" if room else ""
    s += f" on device {device}" if device else ""
    s += f" at {time}." if time else "."
    return s


def _event_text(rng: np.random.Generator, kw: str, room: str, device: str, time: str) -> str:
    style = int(rng.integers(0, 4))
    if style == 0:
        return format_keyword_event(kw, room, device if rng.random() < 0.5 else None, time)
    if style == 1:
        return format_keyword_event(kw, room, None, None)
    if style == 2:
        return f"Keyword '{kw}' detected on device {device} in the {room} at {time}."
    return f"Event: keyword={kw}; room={room}; device={device}; time={time}"


def keyword_event_messages(rng: np.random.Generator) -> list[dict[str, str]]:
    """One chat (optional system prompt, user event, assistant answer) for a random keyword event."""
    room = ROOMS[int(rng.integers(len(ROOMS)))]
    device = f"{room.split()[0].replace(chr(39), '')}-{int(rng.integers(1, 5))}"
    time = f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}"
    if rng.random() < 0.12:
        kw = UNKNOWN_WORDS[int(rng.integers(len(UNKNOWN_WORDS)))]
        answer = UNKNOWN_ANSWER.format(kw=kw, room=room)
    else:
        kw, tmpl = INTENTS[int(rng.integers(len(INTENTS)))]
        answer = tmpl.format(room=room, time=time)
    msgs = [{"role": "system", "content": SYSTEM_PROMPT}] if rng.random() < 0.7 else []
    msgs += [{"role": "user", "content": _event_text(rng, kw, room, device, time)},
             {"role": "assistant", "content": answer}]
    return msgs


def keyword_event_sample(tok, rng: np.random.Generator) -> Sample:
    """One tokenized keyword-event chat; the answer positions cover the assistant reply and <|end|>."""
    msgs = keyword_event_messages(rng)
    prompt = tok.encode(render_chat(msgs[:-1], add_generation_prompt=True)).ids
    answer = tok.encode(msgs[-1]["content"] + END).ids
    ids = prompt + answer + tok.encode("\n").ids
    return Sample(ids, list(range(len(prompt), len(prompt) + len(answer))))
