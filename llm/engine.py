"""The generation engine: requests in, token deltas out, one `step()` at a time.

Each `step()` applies pending adds/aborts, admits waiting requests into free KV-cache slots
(lowest first), runs one batched decode step for every request past its prompt, then spends up to
`max_prefill_tokens_per_step` prompt tokens on prefill chunks (oldest request first), so a long
prompt never stalls the running decodes for more than one chunk. `add_request` and `abort` may be
called from any thread while another thread loops on `step()`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llm.cuda_graphs import DecodeGraphs, PrefillGraphs
from llm.model import Transformer
from llm.sampling import SamplingParams, sample, seed_key
from llm.tokenizer import IncrementalDetokenizer, Tokenizer

__all__ = ["Engine", "SamplingParams", "RequestOutput", "PromptTooLongError"]
log = logging.getLogger(__name__)


class PromptTooLongError(ValueError):
    """The prompt leaves no room to generate within the engine's context length."""

    def __init__(self, num_tokens: int, max_context: int):
        self.num_tokens, self.max_context = num_tokens, max_context
        super().__init__(f"prompt has {num_tokens} tokens but the context length is {max_context} "
                         f"(at most {max_context - 1} prompt tokens)")


@dataclass
class RequestOutput:
    request_id: str
    new_token_ids: list[int]
    finished: bool
    finish_reason: str | None  # "stop" (EOS, stop token or string), "length", "abort"
    num_prompt_tokens: int
    num_generated_tokens: int = 0
    text: str = ""  # new text (stop string cut off) when the engine detokenizes


@dataclass
class _Request:
    id: str
    prompt: list[int]
    params: SamplingParams
    arrival: float = field(default_factory=time.perf_counter)
    slot: int = -1
    computed: int = 0  # prompt tokens already in the KV cache
    output: list[int] = field(default_factory=list)
    key: int = 0  # seed_key of the request's seed (drawn at random when it has none)
    seen_len: int = -1  # prompt + output ids the decode graphs' `seen` row holds for this request
    detok: IncrementalDetokenizer | None = None
    text: str = ""

    @property
    def in_prefill(self) -> bool:
        return self.computed < len(self.prompt)


class Engine:
    """Continuous-batching generation over a loaded `Transformer`.

    Args: model: a loaded model (any device); tokenizer: an `llm.tokenizer.Tokenizer` or None
    (token ids only); max_batch_size: KV-cache slots = requests running at once; max_context:
    positions per slot (default min(model's max positions, 8192)); max_prefill_tokens_per_step:
    the chunked-prefill budget; cuda_graphs: replay captured decode steps (None: on for CUDA);
    compile: torch.compile the captured decode step (CUDA graphs only; compiles per shape bucket;
    "tuned": with inductor's coordinate-descent tuning, ~7% faster at batch 1, ~3x the compile time);
    prefill_graphs: also replay captured prefills of padded length buckets (CUDA graphs only; one
    capture per bucket on first use; 1k-token TTFT of a 1B model on an H100: 22.9 -> 7.1 ms);
    compile_prefill: torch.compile the captured prefills of 2048 tokens and more (prefill graphs
    only; one compile per bucket); detokenize: fill `RequestOutput.text` and honour stop strings;
    decode_steps: with CUDA graphs, run up to this many decode steps back to back on the device
    (each graph samples its token, greedy or seeded, and feeds it to the next replay) with one
    host sync, when nothing waits to be admitted or prefilled. Stop conditions are applied per
    token on the host afterwards (tokens after a stop are discarded), outputs still carry one token
    each, so results and callbacks are those of decode_steps=1 (sampled ones too: the draws are a
    function of (seed, token index), see llm.sampling); a request that arrives meanwhile waits up
    to decode_steps steps for admission. cute_prefill: on sm90+ GPUs with `flash-attn-4` and `quack-kernels`
    installed, prompts from position 0 use FlashAttention-4 and a SwiGLU-epilogue GEMM
    (`llm.kernels.cute_prefill`; 8k-token compiled prefill of a 1B model on an H100: 39.4 -> 34.7 ms);
    where they are missing it logs why and keeps SDPA / cuBLAS (`self.cute_prefill` says what is used).
    """

    def __init__(self, model: Transformer, tokenizer: Tokenizer | None = None, *, max_batch_size: int = 32,
                 max_context: int | None = None, max_prefill_tokens_per_step: int = 2048,
                 cuda_graphs: bool | None = None, compile: bool | str = False, prefill_graphs: bool = False,
                 compile_prefill: bool = False, detokenize: bool = True, decode_steps: int = 1,
                 cute_prefill: bool = False):
        if max_batch_size < 1 or max_prefill_tokens_per_step < 1 or decode_steps < 1:
            raise ValueError("max_batch_size, max_prefill_tokens_per_step and decode_steps must be >= 1")
        self.model, self.tokenizer = model, tokenizer
        self.device = model.device
        limit = model.args.max_position_embeddings
        if model.args.sliding_window:  # within the window, full attention is exact
            limit = min(limit, model.args.sliding_window)
        self.max_context = min(max_context or min(limit, 8192), limit)
        self.max_batch_size = max_batch_size
        self.max_prefill_tokens_per_step = max_prefill_tokens_per_step
        self.decode_steps = decode_steps
        self.detokenize = detokenize and tokenizer is not None
        self.eos_ids: set[int] = set(tokenizer.eos_token_ids) if tokenizer is not None else set()
        # one spare position per row: parked rows of a padded CUDA-graph batch write there
        self.cache_len = self.max_context + 1
        model.setup_caches(max_batch_size, self.cache_len)
        self.cute_prefill: dict[str, str] = {}
        if cute_prefill:  # before any graph capture: the captured prefills must see the swapped kernels
            from llm.kernels import cute_prefill as cp

            self.cute_prefill = cp.enable(model)
            log.info("cute_prefill: %s", self.cute_prefill)
        use_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        self.graphs = DecodeGraphs(model, max_batch_size, self.cache_len, compile=compile) if use_graphs else None
        self.prefill_graphs = None
        if use_graphs and prefill_graphs:
            self.prefill_graphs = PrefillGraphs(model, self.cache_len, compile_min_len=2048 if compile_prefill else None)
        self._lock = threading.Lock()  # guards the hand-over lists below
        self._step_lock = threading.RLock()  # held for a whole step
        self._incoming: list[_Request] = []
        self._aborts: set[str] = set()
        self._live: set[str] = set()
        self._waiting: deque[_Request] = deque()
        self._running: dict[int, _Request] = {}  # slot -> request
        self._free = list(range(max_batch_size))
        self._aborted_out: list[RequestOutput] = []
        self._callbacks: dict[str, Callable[[RequestOutput], None]] = {}

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", dtype=None, **kwargs) -> Engine:
        """Load model (and tokenizer.json if present) from a local Hugging Face folder."""
        from llm.loader import load_model

        model, _ = load_model(path, device=device, dtype=dtype)
        tok = Tokenizer.from_dir(path) if (Path(path) / "tokenizer.json").is_file() else None
        if tok is None:
            log.warning("%s has no tokenizer.json: the engine works on token ids only", path)
        return cls(model, tok, **kwargs)

    # ---- requests -------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams | None = None,
                    callback: Callable[[RequestOutput], None] | None = None) -> None:
        """Queue a request; it joins the running batch at the next step. Raises PromptTooLongError."""
        params = params or SamplingParams()
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ValueError("prompt_ids is empty")
        if len(prompt) >= self.max_context:
            raise PromptTooLongError(len(prompt), self.max_context)
        vocab = self.model.args.vocab_size
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise ValueError(f"prompt ids must be in [0, {vocab})")
        # unseeded: a seed from torch's default generator (so torch.manual_seed makes runs repeat)
        seed = params.seed if params.seed is not None else int(torch.randint(1 << 62, (1,)))
        req = _Request(str(request_id), prompt, params, key=seed_key(seed))
        if self.detokenize:
            req.detok = IncrementalDetokenizer(self.tokenizer, prompt)
        with self._lock:
            if req.id in self._live:
                raise ValueError(f"request id {req.id!r} is already running")
            self._live.add(req.id)
            self._incoming.append(req)
            if callback is not None:
                self._callbacks[req.id] = callback

    def abort(self, request_id: str) -> bool:
        """Cancel a request; its KV slot is freed now if no step is running, else when it ends."""
        with self._lock:
            if request_id not in self._live:
                return False
            self._live.discard(request_id)
            self._aborts.add(request_id)
        if self._step_lock.acquire(blocking=False):
            try:
                self._apply_pending()
            finally:
                self._step_lock.release()
        return True

    def has_unfinished(self) -> bool:
        """True while any request is queued or running (or an abort is yet to be reported)."""
        with self._lock:
            return bool(self._live or self._aborts or self._aborted_out)

    @torch.inference_mode()
    def warmup(self, batch_sizes: list[int] | None = None, max_pos: int | None = None,
               sampling: bool = False) -> int:
        """Capture (and with compile=True, compile) decode graphs now rather than on first use,
        and with prefill_graphs=True the prefill buckets a first chunk can use.

        Args: batch_sizes: running-batch sizes to prepare (None: every bucket); max_pos: the
        longest sequence to prepare for (None: the whole context); sampling: the sampling graphs
        (top-k/top-p variant) too, not only the greedy ones. Returns graphs captured.
        """
        if self.graphs is None:
            return 0
        with self._step_lock:
            n = self.graphs.capture_all(batch_sizes, max_pos, sampling)
            if self.prefill_graphs is not None:
                longest = min(self.max_prefill_tokens_per_step, max_pos or self.cache_len)
                n += self.prefill_graphs.capture_all(longest)
            return n

    @property
    def num_running(self) -> int:
        return len(self._running)

    def _apply_pending(self) -> None:
        with self._lock:
            incoming, self._incoming = self._incoming, []
            aborts, self._aborts = self._aborts, set()
        self._waiting.extend(r for r in incoming if r.id not in aborts)
        for r in incoming:
            if r.id in aborts:
                self._aborted_out.append(self._out(r, [], "abort"))
        if not aborts:
            return
        for r in [r for r in self._waiting if r.id in aborts]:
            self._waiting.remove(r)
            self._aborted_out.append(self._out(r, [], "abort"))
        for r in list(self._running.values()):
            if r.id in aborts:
                self._release(r)
                self._aborted_out.append(self._out(r, [], "abort"))

    def _release(self, r: _Request) -> None:
        self._running.pop(r.slot, None)
        self._free.append(r.slot)
        self._free.sort()
        r.slot = -1

    def _out(self, r: _Request, new: list[int], reason: str | None, text: str = "") -> RequestOutput:
        return RequestOutput(r.id, new, reason is not None, reason, len(r.prompt), len(r.output), text)

    # ---- the step -------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        """One iteration: admit, decode every running request once, prefill up to the token budget."""
        with self._step_lock:
            self._apply_pending()
            outputs, self._aborted_out = self._aborted_out, []
            while self._waiting and self._free:
                r = self._waiting.popleft()
                r.slot = self._free.pop(0)
                self._running[r.slot] = r
            decoding = [r for _, r in sorted(self._running.items()) if not r.in_prefill]
            if decoding:
                steps = self._decode_graphs(decoding, self._steps_now(decoding))
                if steps is not None:
                    outputs += self._finish_steps(decoding, steps)
                else:
                    outputs += self._sample_and_finish(decoding, self._decode(decoding))
            budget = self.max_prefill_tokens_per_step
            for r in sorted((r for r in self._running.values() if r.in_prefill), key=lambda r: r.arrival):
                if budget <= 0:
                    break
                n = min(budget, len(r.prompt) - r.computed)
                budget -= n
                logits = self._prefill(r, n)
                if not r.in_prefill:
                    outputs += self._sample_and_finish([r], logits)
            if self._callbacks:
                # after the whole step, so a callback that adds or aborts sees consistent state
                for o in outputs:
                    cb = self._callbacks.pop(o.request_id, None) if o.finished else self._callbacks.get(o.request_id)
                    if cb is not None:
                        cb(o)
            return outputs

    def _prefill(self, r: _Request, n: int) -> torch.Tensor:
        start = r.computed
        if start == 0 and self.prefill_graphs is not None:
            logits = self.prefill_graphs.run(r.slot, r.prompt[:n])
            if logits is not None:
                r.computed += n
                return logits
        tokens = torch.tensor([r.prompt[start:start + n]], device=self.device)
        pos = torch.arange(start, start + n, device=self.device)[None]
        slots = torch.tensor([r.slot], device=self.device)
        logits = self.model(tokens, pos, slots, kv_len=start + n, fresh=start == 0, last_only=True)
        r.computed += n
        return logits[:, -1]

    def _decode(self, reqs: list[_Request]) -> torch.Tensor:
        """Logits of one eager decode step (no graph for this batch); the host samples."""
        slots = [r.slot for r in reqs]
        tokens = [r.output[-1] for r in reqs]
        pos = [len(r.prompt) + len(r.output) - 1 for r in reqs]
        dev = self.device
        t = torch.tensor(tokens, device=dev)[:, None]
        p = torch.tensor(pos, device=dev)[:, None]
        s = None if slots == list(range(len(slots))) else torch.tensor(slots, device=dev)
        return self.model(t, p, s, kv_len=max(pos) + 1)[:, -1]

    def _steps_now(self, decoding: list[_Request]) -> int:
        """How many decode steps to run back to back now (1: the one-step path)."""
        if self.decode_steps == 1 or self.graphs is None:
            return 1
        if (self._waiting and self._free) or any(r.in_prefill for r in self._running.values()):
            return 1  # someone is to be admitted or prefilled next step: do not make them wait
        with self._lock:
            if self._incoming or self._aborts:
                return 1
        # never past a request's own end: max_tokens, or the context (what "length" checks)
        left = min(min(r.params.max_tokens - len(r.output), self.max_context - len(r.prompt) - len(r.output))
                   for r in decoding)
        return max(1, min(self.decode_steps, left))

    def _decode_graphs(self, reqs: list[_Request], k: int) -> list[list[int]] | None:
        """Up to k decode steps' tokens from the graphs, which sample on the device (None: no graph)."""
        if self.graphs is None or not self.graphs.enabled(self.model):
            return None
        sampling, reseen = None, {}
        if not all(r.params.greedy and r.params.repetition_penalty == 1.0 for r in reqs):
            sampling = ([r.params for r in reqs], [r.key for r in reqs], [len(r.output) for r in reqs])
            reseen = {r.slot: r.prompt + r.output for r in reqs
                      if r.params.repetition_penalty != 1.0 and r.seen_len != len(r.prompt) + len(r.output)}
        got = self.graphs.run_steps([r.slot for r in reqs], [r.output[-1] for r in reqs],
                                    [len(r.prompt) + len(r.output) - 1 for r in reqs], k, sampling, reseen)
        if got is not None and sampling is not None:
            for r in reqs:  # the graph marked every token it drew as seen
                r.seen_len = len(r.prompt) + len(r.output) + len(got)
        return got

    def _finish_steps(self, reqs: list[_Request], steps: list[list[int]]) -> list[RequestOutput]:
        """Apply the tokens of several device steps in order, as that many one-step decodes would;
        a request's tokens after its stop (or after an abort that came in meanwhile) are dropped."""
        with self._lock:
            aborted = set(self._aborts)
        live = list(enumerate(reqs))
        outs: list[RequestOutput] = []
        for j, row in enumerate(steps):
            if j and aborted:
                live = [(i, r) for i, r in live if r.id not in aborted]
            if not live:
                break
            got = self._finish([r for _, r in live], [row[i] for i, _ in live])
            outs += got
            live = [x for x, o in zip(live, got, strict=True) if not o.finished]
        return outs

    def _sample_and_finish(self, reqs: list[_Request], logits: torch.Tensor) -> list[RequestOutput]:
        toks = sample(logits, [r.params for r in reqs],
                      [r.prompt + r.output if r.params.repetition_penalty != 1.0 else [] for r in reqs],
                      [r.key for r in reqs], [len(r.output) for r in reqs])
        return self._finish(reqs, toks)

    def _finish(self, reqs: list[_Request], toks: list[int]) -> list[RequestOutput]:
        """Append one token to each request, apply its stop conditions, release finished ones."""
        outs = []
        for r, t in zip(reqs, toks, strict=True):
            r.output.append(t)
            p = r.params
            reason = None
            if (t in self.eos_ids and not p.ignore_eos) or t in p.stop_token_ids:
                reason = "stop"
            text = ""
            if r.detok is not None and reason is None:
                text = r.detok.add([t])
                if p.stop and text:
                    prev, full = len(r.text), r.text + text
                    start = max(0, prev - max(len(x) for x in p.stop) + 1)
                    hits = [i for i in (full.find(x, start) for x in p.stop) if i >= 0]
                    if hits:
                        # text already streamed cannot be taken back: cut what is new
                        text, reason = full[prev:max(prev, min(hits))], "stop"
                r.text += text
            if reason is None and (len(r.output) >= p.max_tokens or len(r.prompt) + len(r.output) >= self.max_context):
                reason = "length"
            if reason is not None:
                self._release(r)
                with self._lock:
                    self._live.discard(r.id)
            outs.append(self._out(r, [t], reason, text))
        return outs

    # ---- convenience ----------------------------------------------------------------------
    def generate_ids(self, prompts: list[list[int]], params: SamplingParams | None = None) -> list[list[int]]:
        """Generate for token-id prompts (batched, blocking); returns the generated ids of each."""
        params = params or SamplingParams()
        ids = [f"_gen-{id(prompts)}-{i}" for i in range(len(prompts))]
        for rid, pr in zip(ids, prompts, strict=True):
            self.add_request(rid, pr, params)
        got: dict[str, list[int]] = {rid: [] for rid in ids}
        pending = set(ids)
        while pending:
            for o in self.step():
                if o.request_id in got:
                    got[o.request_id] += o.new_token_ids
                    if o.finished:
                        pending.discard(o.request_id)
        return [got[rid] for rid in ids]

    def generate(self, prompts: list[str], params: SamplingParams | None = None) -> list[str]:
        """Generate text for each prompt (batched, blocking); stop strings are cut off."""
        if self.tokenizer is None:
            raise RuntimeError("this engine has no tokenizer; use generate_ids()")
        params = params or SamplingParams()
        outs = self.generate_ids([self.tokenizer.encode(p) for p in prompts], params)
        texts = []
        for ids in outs:
            ids = [t for t in ids if t not in self.eos_ids and t not in params.stop_token_ids]
            text = self.tokenizer.decode(ids)
            cuts = [i for i in (text.find(s) for s in params.stop) if i >= 0]
            texts.append(text[:min(cuts)] if cuts else text)
        return texts
