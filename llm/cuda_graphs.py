"""CUDA-graph replay of the decode step.

A decode step of a small model at batch 1 is launch-bound (hundreds of small kernels), so the
engine captures one graph per (batch bucket, attended-length bucket) and replays it. The batch of
a graph is the KV-cache slots 0..B-1 (the engine keeps running requests in the lowest slots):
rows whose slot is free or still prefilling are "parked" at the spare last cache position, where
their writes harm nobody and their logits are ignored. Graphs are captured lazily on first use
and share one memory pool.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from llm.moe import MoE
from llm.sampling import SamplingParams, draw_tokens, greedy_tokens, row_params, sample_tokens, vocab_hash

log = logging.getLogger(__name__)


def _side_stream_warmup(device: torch.device, fwd) -> None:
    """Run `fwd` once before a capture (cuBLAS handles, lazy inits), on a side stream on CUDA."""
    if device.type != "cuda":
        fwd()
        return
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fwd()
    torch.cuda.current_stream().wait_stream(s)


def _buckets(lo: int, hi: int) -> list[int]:
    out, b = [], lo
    while b < hi:
        out.append(b)
        b *= 2
    return [*out, hi]


class DecodeGraphs:
    """Captured decode steps for `model` (its caches already set up with `cache_len` positions).

    Each graph also picks the next token on the device and feeds it back: it writes the token into
    its own token input, advances the positions of the active rows and appends the tokens to a ring
    of `max_steps` rows, so `run_steps` replays it k times back to back and reads k tokens with one
    host sync. Two kinds of graph per (batch, kv) bucket: a greedy one (argmax only) and, captured
    when a batch first needs it, a sampling one (`llm.sampling.sample_tokens`: temperature, top-k,
    top-p, repetition penalty and counter-based seeded draws, per-row parameters read from static
    buffers), in a variant without the sort when no row uses top-k/top-p. The sampler's draws are a
    function of (seed, token index, vocab index) only, so k steps per sync give the tokens that k
    one-step runs give. The ids each slot has seen (for the penalty) live in `seen` [max_batch, V],
    which the sampling graphs update with every token they draw.
    """

    def __init__(self, model, max_batch: int, cache_len: int, min_kv: int = 256, compile: bool | str = False,
                 max_steps: int = 64):
        if compile not in (False, True, "tuned"):
            raise ValueError(f"compile must be False, True or 'tuned', got {compile!r}")
        self.model = model
        # torch.compile fuses the ~50 small kernels per layer (norms, RoPE, masking) that a graph
        # still has to launch one by one; one specialisation per (batch, kv) bucket. Compiled, the
        # decode attention runs as multiply + sum (two tiny cuBLAS batched GEMMs become fused
        # reductions); "tuned" adds inductor's coordinate-descent tuning, which also turns the
        # batch-1 GEMVs into fused Triton reductions (1.1B on an H100: 1.42 -> 1.32 ms per step,
        # but ~50 s instead of ~15 s of compile per bucket; issue #6)
        self.fn = model
        self.draw_fn = draw_tokens
        self.tuned = compile == "tuned"
        if compile:
            import torch._dynamo

            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
            self.fn = torch.compile(model, dynamic=False, fullgraph=True)
            # the draw is ~60 elementwise ops over [B, V] (the hash) and two argmaxes: a few fused
            # kernels compiled (eager at b8 they cost ~0.3 ms of int64 temporaries per step)
            self.draw_fn = torch.compile(draw_tokens, dynamic=False, fullgraph=True)
            model.set_decode_sum_attention(True)
        self.max_batch = max_batch
        self.cache_len = cache_len
        self.max_steps = max_steps
        self.batch_buckets = _buckets(1, max_batch)
        self.kv_buckets = _buckets(min(min_kv, cache_len), cache_len)
        self.graphs: dict[tuple[int, int], tuple] = {}  # greedy: (graph, buf, ring, logits)
        self.sample_graphs: dict[tuple[int, int, bool], tuple] = {}  # + fbuf; key (B, kv, truncate)
        self.failed: set[tuple] = set()
        self.pool = None
        self.seen: torch.Tensor | None = None  # [max_batch, V] bool, with the first sampling graph
        self.table: torch.Tensor | None = None
        self._moes: list | None = None
        self._attns: list = []

    def enabled(self, model) -> bool:
        """Graphs replay no Python: off while a routing observer or attention capture is on."""
        if self._moes is None:  # looked up once: walking every module each step costs ~0.1 ms
            self._moes = [m for m in model.modules() if isinstance(m, MoE)]
            self._attns = [layer.attention for layer in model.layers]
        return not (any(m.observer is not None for m in self._moes) or any(a.return_last_attn for a in self._attns))

    def _warmup(self, fwd) -> None:
        _side_stream_warmup(self.model.device, fwd)

    def _graph(self, fwd):
        """(graph with .replay(), its static output): the one CUDA-only step."""
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=self.pool):
            out = fwd()
        self.pool = g.pool()
        return g, out

    def _capture(self, B: int, kv: int, truncate: bool | None = None):
        """Capture the greedy graph (truncate None) or a sampling graph of bucket (B, kv)."""
        dev = self.model.device
        sampling = truncate is not None
        if sampling and self.seen is None:  # before any capture: a graph reads fixed addresses
            V = self.model.args.vocab_size
            self.seen = torch.zeros(self.max_batch, V, dtype=torch.bool, device=dev)
            self.table = vocab_hash(V, dev)
        # [tokens; positions; active; (n; seed keys; top_k;) ring index] in one buffer: one host copy
        # per run, and the entry keeps every static input alive (a replay reads raw addresses)
        buf = torch.zeros((6 if sampling else 3) * B + 1, dtype=torch.long, device=dev)
        tok, pos, active, idx = buf[:B, None], buf[B:2 * B, None], buf[2 * B:3 * B, None], buf[-1:]
        pos.fill_(self.cache_len - 1)  # the warm-up runs parked: it writes no slot's real rows
        ring = torch.zeros(self.max_steps, B, dtype=torch.long, device=dev)
        ints = buf[3 * B:6 * B].view(3, B) if sampling else None
        fbuf = torch.tensor([[0.0] * B, [0.0] * B, [1.0] * B], device=dev)  # parked rows: greedy, no penalty
        seen = self.seen[:B] if sampling else None

        def fwd():
            logits = self.fn(tok, pos, None, kv_len=kv)[:, -1]  # [B, V]
            if sampling:
                nxt = sample_tokens(logits, ints, fbuf, self.table, seen, truncate, self.draw_fn)
                mark = nxt[:, None]
                seen.scatter_(1, mark, seen.gather(1, mark) | active.bool())  # parked rows mark nothing
                ints[0].add_(active[:, 0])  # the index of the next token drawn
            else:
                nxt = greedy_tokens(logits)  # the same argmax the host sampler takes on these logits
            ring.index_copy_(0, idx, nxt[None])
            tok.copy_(nxt[:, None])
            pos.add_(active)  # parked rows stay at the spare position
            idx.add_(1)
            return logits

        with self._compile_options():
            for _ in range(2):  # the second call runs what compile produced
                self._warmup(fwd)
            g, logits = self._graph(fwd)
        return (g, buf, ring, logits, fbuf) if sampling else (g, buf, ring, logits)

    def _compile_options(self):
        """Inductor options for the compiles a capture triggers (scoped: other compiles keep theirs)."""
        if not self.tuned:
            return contextlib.nullcontext()
        import torch._inductor.config

        return torch._inductor.config.patch(coordinate_descent_tuning=True)

    def _bucket(self, slots: list[int], pos: list[int]) -> tuple[int, int]:
        return min(b for b in self.batch_buckets if b > max(slots)), min(k for k in self.kv_buckets if k > max(pos))

    def _entry(self, key: tuple[int, int], truncate: bool | None = None):
        full = key if truncate is None else (*key, truncate)
        table = self.graphs if truncate is None else self.sample_graphs
        if full in self.failed:
            return None
        if full not in table:
            try:
                table[full] = self._capture(*full)
            except Exception as e:  # e.g. a MoE path that syncs: stay eager for this shape
                log.warning("decode graph capture %s failed (%s); running eager", full, e)
                self.failed.add(full)
                return None
        return table[full]

    def capture_all(self, batch_sizes: list[int] | None = None, max_pos: int | None = None,
                    sampling: bool = False) -> int:
        """Capture ahead of time (warm-up) for the given batch sizes up to `max_pos`; returns how many.
        sampling: the sampling graphs (with top-k/top-p) too."""
        n = 0
        for b in batch_sizes or self.batch_buckets:
            for kv in self.kv_buckets:
                key = (min(x for x in self.batch_buckets if x >= b), kv)
                for truncate in (None, True) if sampling else (None,):
                    table = self.graphs if truncate is None else self.sample_graphs
                    full = key if truncate is None else (*key, truncate)
                    if full not in table:
                        table[full] = self._capture(*full)
                        n += 1
                if max_pos is not None and kv > max_pos:
                    break
        return n

    def _load(self, buf: torch.Tensor, B: int, slots: list[int], tokens: list[int], pos: list[int],
              rows: tuple[list, list] | None = None, fbuf: torch.Tensor | None = None) -> None:
        """Fill a graph's static inputs: one host copy (two with sampling rows, `row_params` lists)."""
        host = [0] * B + [self.cache_len - 1] * B + [0] * B  # parked rows by default
        host += [0] * (3 * B) if rows is not None else []
        for i, (s, t, p) in enumerate(zip(slots, tokens, pos, strict=True)):
            host[s], host[B + s], host[2 * B + s] = t, p, 1
            if rows is not None:
                for j in range(3):
                    host[(3 + j) * B + s] = rows[0][j][i]
        buf.copy_(torch.tensor([*host, 0], dtype=torch.long), non_blocking=True)  # ring index 0
        if rows is not None:
            fl = [[0.0] * B, [0.0] * B, [1.0] * B]
            for j in range(3):
                for s, v in zip(slots, rows[1][j], strict=True):
                    fl[j][s] = v
            fbuf.copy_(torch.tensor(fl, dtype=torch.float32), non_blocking=True)

    def steps_left_in_bucket(self, pos: list[int]) -> int:
        """Decode steps these rows can take before their kv bucket changes (>= 1)."""
        kv = min(k for k in self.kv_buckets if k > max(pos))
        return kv - max(pos)

    def run_steps(self, slots: list[int], tokens: list[int], pos: list[int], k: int,
                  sampling: tuple[list[SamplingParams], list[int], list[int]] | None = None,
                  reseen: dict[int, list[int]] | None = None) -> list[list[int]] | None:
        """The tokens of up to k decode steps, [steps][len(slots)], one host sync (None: no graph).

        Args: sampling: None (every row greedy, unpenalised: the greedy graph) or each row's
        (SamplingParams, seed key, number of tokens generated so far); reseen: slot -> the ids
        (prompt + output) to mark as seen before the run, for rows whose `seen` row is stale.
        Stops early at the end of the kv bucket (so every step replays the graph a one-step decode
        would use: same logits bit for bit) and at `max_steps`; the caller loops for the rest.
        """
        key = self._bucket(slots, pos)
        truncate = None if sampling is None else any(p.truncates for p in sampling[0])
        entry = self._entry(key, truncate)
        if entry is None:
            return None
        g, buf, ring = entry[:3]
        k = max(1, min(k, self.max_steps, self.steps_left_in_bucket(pos)))
        if sampling is None:
            self._load(buf, key[0], slots, tokens, pos)
        else:
            self._load(buf, key[0], slots, tokens, pos, row_params(*sampling), entry[4])
            for s, ids in (reseen or {}).items():
                row = self.seen[s]
                row.zero_()
                row[torch.tensor(sorted(set(ids)), device=row.device)] = True
        for _ in range(k):
            g.replay()
        n = len(slots)
        got = ring[:k, :n] if slots == list(range(n)) else ring[:k, torch.tensor(slots, device=ring.device)]
        return got.tolist()


class PrefillGraphs:
    """Captured whole-prompt prefills, one per padded length bucket (64, 128, ... <= cache length).

    A prompt (or a first chunk) of n tokens runs as a bucket of L >= n tokens: the padding sits
    after the prompt, so causal attention keeps it out of the real tokens' results, and the KV rows
    it writes (positions n..L-1) are overwritten by decode before anything reads them. Saves the
    host-side launch cost of ~50 kernels per layer, which dominates a 1k-token prefill on an H100.
    MoE layers that would take the per-expert (host-syncing) path are not captured.

    Two rules the graphs depend on (both broke in the first version, issue #6):
    - every static input the graph reads (tokens, positions, slot, last index) is a view of one
      buffer kept by the entry: a replay reads raw addresses, and a freed input's memory is soon
      reused by the caching allocator (garbage positions: wrong tokens, then out-of-range gathers);
    - the eager warm-up before a capture really runs, so it runs with every position parked at the
      spare last cache position, which no request ever reads: it may not write any slot's rows.
    """

    def __init__(self, model, cache_len: int, min_len: int = 64, compile_min_len: int | None = None):
        self.model = model
        # long prefills are GPU-bound, not launch-bound: there torch.compile's fusion of the
        # elementwise ops (RMSNorm in fp32, RoPE, SwiGLU) is what is left to gain; one compile
        # per bucket, so only from compile_min_len tokens up
        self.compile_min_len = compile_min_len
        self.compiled = None
        if compile_min_len is not None:
            import torch._dynamo

            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
            self.compiled = torch.compile(model, dynamic=False)
        self.cache_len = cache_len
        self.buckets = _buckets(min(min_len, cache_len), cache_len)
        self.graphs: dict[int, tuple] = {}
        self.failed: set[int] = set()
        self.pool = None
        self._moes = [m for m in model.modules() if isinstance(m, MoE)]

    def _capturable(self, length: int) -> bool:
        # the MoE paths without a host sync (MoE.forward picks the same way)
        return all(length <= m.dense_max_tokens or length * m._expert_macs() <= m.dense_max_macs
                   for m in self._moes)

    def _static_inputs(self, L: int) -> tuple[torch.Tensor, ...]:
        """(buf, tok [1, L], pos [1, L], slot [1], last [1]): views of one buffer, positions parked."""
        buf = torch.zeros(2 * L + 2, dtype=torch.long, device=self.model.device)
        tok, slot, last, pos = buf[:L].view(1, L), buf[L:L + 1], buf[L + 1:L + 2], buf[L + 2:].view(1, L)
        pos.fill_(self.cache_len - 1)
        return buf, tok, pos, slot, last

    _warmup = DecodeGraphs._warmup
    _graph = DecodeGraphs._graph

    def _capture(self, L: int):
        _, tok, pos, slot, last = self._static_inputs(L)
        fn = self.compiled if self.compiled is not None and self.compile_min_len <= L else self.model

        def fwd():
            return fn(tok, pos, slot, kv_len=L, fresh=True, logits_index=last)[:, 0]

        self._warmup(fwd)
        g, logits = self._graph(fwd)
        # only now the real positions: the warm-up above ran (and wrote KV) at the parked one
        pos.copy_(torch.arange(L, device=pos.device)[None])
        return g, tok, slot, last, logits  # tok is a view of the buffer: pos stays alive with it

    def _ensure(self, L: int) -> bool:
        """Capture bucket L if not done yet; False if it cannot be (failed once: stays eager)."""
        if L in self.graphs:
            return True
        if L in self.failed or not self._capturable(L):
            return False
        try:
            self.graphs[L] = self._capture(L)
        except Exception as e:  # e.g. out of memory: stay eager for this length
            log.warning("prefill graph capture for %d tokens failed (%s); running eager", L, e)
            self.failed.add(L)
            return False
        return True

    def capture_all(self, max_tokens: int) -> int:
        """Capture every bucket a first chunk of up to `max_tokens` tokens can use; returns how many
        are captured. For warm-up: otherwise the first prompt of each bucket pays its capture
        (~140-180 ms on the 1B at 1k/8k tokens)."""
        for length in self.buckets:
            self._ensure(length)
            if length >= max_tokens:
                break
        return len(self.graphs)

    def run(self, slot: int, tokens: list[int]) -> torch.Tensor | None:
        """Logits [1, V] after `tokens` prefilled from position 0 into `slot` (None: run eager).

        The logits are a fresh tensor (not the graph's output buffer, which the next replay of
        this or another bucket overwrites).
        """
        n = len(tokens)
        L = min((b for b in self.buckets if b >= n), default=None)
        if L is None or self.model.layers[0].attention.return_last_attn:
            return None
        if any(m.observer is not None for m in self._moes):  # a replay would not call it
            return None
        if not self._ensure(L):
            return None
        g, tok, slot_buf, last, logits = self.graphs[L]
        host = torch.zeros(1, L + 2, dtype=torch.long)
        host[0, :n] = torch.tensor(tokens, dtype=torch.long)
        host[0, L], host[0, L + 1] = slot, n - 1
        dev_host = host.to(tok.device, non_blocking=True)  # one copy, then split on the device
        tok.copy_(dev_host[:, :L])
        slot_buf.copy_(dev_host[0, L:L + 1])
        last.copy_(dev_host[0, L + 1:])
        g.replay()
        return logits.clone()
