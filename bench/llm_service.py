"""Benchmark of the LLM gRPC service and of the keyword -> answer path.

Runs `wakeline llm serve` in a subprocess (so the client does not share its interpreter) and
measures over real gRPC on 127.0.0.1:

- load: requests/s, output tokens/s, TTFT and inter-token latency p50/p99 at each concurrency
  (closed loop: C clients, each sending its next GenerateStream request when the last ends; the
  request is the worker's chat for a keyword event);
- stall: the longest gap in a running decode while a long prompt is prefilled, with the chunked
  prefill budget (`max_prefill_tokens_per_step`) and without it (one whole-prompt chunk);
- e2e: keyword -> first answer token at the device: a KeywordEvent published for a connected
  device (edge node + worker + LLM service + Redis, all real processes) until the Answer arrives
  on the device's gRPC stream. The answer travels whole, so "first answer token" = the answer.

    python bench/llm_service.py --model models/llm/dense --out runs/llm_service.json
    SMOKE=1 python bench/llm_service.py      # seconds, tiny random model

Without --model it uses models/llm/dense when shipped, else a random-weight Llama of the
default model's shape (said so in the JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "protos")]

from services.llm.client import LlmClient, build_request  # noqa: E402
from services.llm.testing import ServiceProcess, make_tiny_llama, start_llm, start_worker  # noqa: E402
from services.testing import free_port  # noqa: E402

# The worker's request for a keyword event (the service's main workload), as chat messages.
CHAT = [{"role": "system", "content": "You are Wakeline, a helpful voice assistant. Answer in one short sentence."},
        {"role": "user", "content": "The user said 'lights on' in the kitchen on device kitchen-2 at 19:30."}]


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def _r(x: float, nd: int = 1) -> float | None:
    """Rounded, or None for NaN (no samples): JSON has no NaN."""
    return None if x != x else round(x, nd)


async def one_request(c: LlmClient, prompt: str | None, max_tokens: int, messages: list | None = None) -> dict:
    t0 = time.perf_counter()
    ttft, last, itl, n = None, None, [], 0
    async for m in c.generate_stream(build_request(prompt, messages, max_tokens=max_tokens)):
        now = time.perf_counter()
        if m.token_ids:
            if ttft is None:
                ttft = now - t0
            elif last is not None:
                itl += [(now - last) / len(m.token_ids)] * len(m.token_ids)
            last = now
            n += len(m.token_ids)
    return {"ttft": ttft or 0.0, "itl": itl, "tokens": n, "total": time.perf_counter() - t0}


async def load_level(target: str, concurrency: int, n_requests: int, max_tokens: int) -> dict:
    """Closed loop at `concurrency`: requests/s, tokens/s, TTFT and ITL percentiles (ms)."""
    results: list[dict] = []
    todo = list(range(n_requests))

    async def client() -> None:
        async with LlmClient(target) as c:
            while todo:
                todo.pop()
                results.append(await one_request(c, None, max_tokens, CHAT))

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    ttft = [r["ttft"] * 1e3 for r in results]
    itl = [x * 1e3 for r in results for x in r["itl"]]
    toks = sum(r["tokens"] for r in results)
    return {"concurrency": concurrency, "requests": len(results), "wall_s": round(wall, 2),
            "requests_per_s": round(len(results) / wall, 2), "output_tokens_per_s": round(toks / wall, 1),
            "mean_output_tokens": round(toks / max(1, len(results)), 1),
            "ttft_p50_ms": _r(pct(ttft, 50), 1), "ttft_p99_ms": _r(pct(ttft, 99), 1),
            "itl_p50_ms": _r(pct(itl, 50), 2), "itl_p99_ms": _r(pct(itl, 99), 2)}


async def stall(target: str, long_prompt_tokens: int) -> dict:
    """Largest inter-token gap of a running decode while a long prompt is prefilled."""
    async with LlmClient(target) as c:
        gaps: list[float] = []
        first = asyncio.Event()

        async def decoder():
            last = None
            async for m in c.generate_stream(build_request("hello", max_tokens=400)):
                now = time.perf_counter()
                if m.token_ids:
                    if last is not None:
                        gaps.append(now - last)
                    last = now
                    if len(gaps) == 20:
                        first.set()

        dec = asyncio.ensure_future(decoder())
        await first.wait()
        base = list(gaps)
        long = ("the quick brown fox jumps over the lazy dog " * (long_prompt_tokens // 9 + 1))
        r = await one_request(c, long, 4)
        await dec
    during = gaps[len(base):]
    return {"long_prompt_ttft_ms": round(r["ttft"] * 1e3, 1), "decode_itl_p50_ms": _r(pct(base, 50) * 1e3, 2),
            "max_decode_gap_ms": round(max(during) * 1e3, 1) if during else None}


async def keyword_to_answer(llm_target: str, redis_url: str, n: int, workdir: Path, use_edge: bool = True) -> dict:
    """Event published for a connected device -> Answer on its stream (edge + worker + LLM, real processes).

    Without an edge node (e.g. the GPU machine lacks the phonemizer's wheels) the answer is timed
    where the edge node would pick it up: its reply stream on the bus.
    """
    from wakeline.v1 import bus_pb2

    from services.bus import BusConfig, EventProducer, ReplyConsumer, open_bus

    edge, where, kws_dir = None, "device gRPC stream (through the edge node)", REPO / "models" / "kws" / "default"
    try:
        if not use_edge:
            raise RuntimeError("--no-edge")
        from services.edge.testing import EdgeProcess

        if not any(kws_dir.glob("*.onnx")):
            from kws.export import export_untrained

            kws_dir = export_untrained(workdir / "kws")
        edge = EdgeProcess(kws_dir, redis_url, node_id="edge-bench").start()
    except Exception as e:
        print(f"edge node unavailable ({type(e).__name__}: {str(e)[:300]}); timing at the reply stream")
        where, kws_dir = "edge node's reply stream (no edge node)", None
    worker = start_worker(redis_url, llm_target, "worker-bench", {"WAKELINE_WORKER_GROUP": "bench",
                                                                   "WAKELINE_WORKER_MAX_TOKENS": "32"})
    lat, ttft, tokens = [], [], []
    try:
        bus = await open_bus(BusConfig(url=redis_url, spool_dir=str(workdir / "spool")))
        prod = EventProducer(bus, workdir / "spool")
        started = asyncio.Event()
        answers: asyncio.Queue = asyncio.Queue()

        async def device():
            import numpy as np

            from services.edge.client import DeviceAudio, open_channel, stream_device

            audio = DeviceAudio(np.zeros(16000 * 600, np.float32), 16000)
            async for r in stream_device(open_channel(edge.target), "dev-bench", ["lights on"], audio, realtime=True):
                if r.kind == "started":
                    started.set()
                elif r.kind == "answer":
                    answers.put_nowait((time.perf_counter(), r.response.answer))

        reply_consumer = ReplyConsumer(bus, "edge-bench")

        async def replies():
            async def on_answer(a):
                answers.put_nowait((time.perf_counter(), a))

            started.set()
            await reply_consumer.run(on_answer)

        dev = asyncio.ensure_future(device() if edge else replies())
        await started.wait()
        for _ in range(n):
            ev = bus_pb2.KeywordEvent(event_id=uuid.uuid4().hex, device_id="dev-bench", edge_node="edge-bench",
                                      keyword="lights on", created_unix_ms=int(time.time() * 1000),
                                      attributes={"room": "kitchen"})
            t0 = time.perf_counter()
            await prod.publish_event(ev)
            t1, a = await asyncio.wait_for(answers.get(), 120)
            lat.append((t1 - t0) * 1e3)
            ttft.append(a.ttft_ms)
            tokens.append(a.usage.completion_tokens)
        if edge:
            dev.cancel()
        else:
            reply_consumer.stop()
        await asyncio.wait({dev}, timeout=10)
        await prod.close()
        await bus.close()
    finally:
        worker.cleanup()
        if edge:
            edge.cleanup()
    return {"n": n, "measured_at": where, "kws_model": str(kws_dir) if kws_dir else None,
            "event_to_answer_p50_ms": _r(pct(lat, 50), 1), "event_to_answer_p99_ms": _r(pct(lat, 99), 1),
            "llm_ttft_p50_ms": _r(pct(ttft, 50), 1),
            "mean_answer_tokens": round(statistics.mean(tokens), 1) if tokens else 0}


def _keyword_spec(kws_dir: Path, samples) -> tuple[str, str]:
    """"lights on" with the automatic threshold if it fires offline on this speech, else with a
    device-set threshold just under the utterance's score (what is timed is the pipeline)."""
    from edge.spotter import Spotter

    sp = Spotter.from_dir(str(kws_dir), num_threads=1)
    st = sp.create_stream(["lights on"])
    st.accept_waveform(16000, samples[: 16000 * 4])
    while sp.is_ready(st):
        sp.decode(st)
    if st.results():
        return "lights on", "automatic threshold"
    thr = round(max(0.05, sp.score_pair(samples[: 16000 * 4], 16000, "lights on") - 0.01), 3)
    return f"lights on:{thr}", f"device threshold {thr} (the automatic one did not fire offline)"


async def spoken_keyword_to_answer(llm_target: str, redis_url: str, n: int, workdir: Path) -> dict:
    """Spoken keyword (eSpeak) streamed in real time -> detection -> answer, with the shipped KWS model.

    Latency = answer arrival at the device - wall time at which the chunk holding the detected
    keyword's end was sent (the device-side clock of "the user stopped speaking").
    """
    kws_dir = Path(os.environ.get("WAKELINE_BENCH_KWS_MODEL", REPO / "models" / "kws" / "default"))
    if not any(kws_dir.glob("*.onnx")):
        return {"skipped": f"no KWS model at {kws_dir} (the shipped models/kws/default)"}
    from services.edge.client import DeviceAudio, StreamStats, open_channel, stream_device
    from services.edge.testing import EdgeProcess, utterance_track

    samples, spans = utterance_track([1.0] + ["lights on", 3.0] * n, rate=16000)
    keyword, note = await asyncio.to_thread(_keyword_spec, kws_dir, samples)
    edge = EdgeProcess(kws_dir, redis_url, node_id="edge-wav").start()
    worker = start_worker(redis_url, llm_target, "worker-wav", {"WAKELINE_WORKER_GROUP": "bench-wav",
                                                               "WAKELINE_WORKER_MAX_TOKENS": "32"})
    ends: dict[str, float] = {}
    lat, det_lat = [], []
    try:
        stats = StreamStats()
        async for r in stream_device(open_channel(edge.target), "dev-wav", [keyword],
                                     DeviceAudio(samples, 16000), realtime=True, linger_s=10, stats=stats):
            if r.kind == "detection":
                d = r.response.detection
                ends[d.event_id] = stats.sent_wall(d.end_time) or r.t_recv
                if r.latency_s is not None:
                    det_lat.append(r.latency_s * 1e3)
            elif r.kind == "answer" and r.response.answer.event_id in ends:
                lat.append((r.t_recv - ends[r.response.answer.event_id]) * 1e3)
    finally:
        worker.cleanup()
        edge.cleanup()
    return {"spoken": n, "keyword": keyword, "threshold_note": note, "detections": len(ends), "answers": len(lat),
            "keyword_end_to_answer_p50_ms": _r(pct(lat, 50), 1), "keyword_end_to_answer_p99_ms": _r(pct(lat, 99), 1),
            "keyword_end_to_detection_p50_ms": _r(pct(det_lat, 50), 1)}


def table(res: dict) -> str:
    rows = ["| concurrency | req/s | out tok/s | mean out tok | TTFT p50 / p99 ms | ITL p50 / p99 ms |",
            "|---|---|---|---|---|---|"]
    for r in res["load"]:
        rows.append(f"| {r['concurrency']} | {r['requests_per_s']} | {r['output_tokens_per_s']} | "
                    f"{r['mean_output_tokens']} | {r['ttft_p50_ms']} / {r['ttft_p99_ms']} | "
                    f"{r['itl_p50_ms']} / {r['itl_p99_ms']} |")
    for name, s in res.get("stall", {}).items():
        rows.append(f"\nprefill stall ({name}): {s}")
    if res.get("e2e"):
        rows.append(f"\nkeyword event -> answer: {res['e2e']}")
    if res.get("spoken"):
        rows.append(f"\nspoken keyword end -> answer at the device: {res['spoken']}")
    return "\n".join(rows)


def main() -> int:
    smoke = os.environ.get("SMOKE") == "1"
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=8 if smoke else 64, help="requests per level (>= concurrency)")
    ap.add_argument("--max-tokens", type=int, default=16 if smoke else 64)
    ap.add_argument("--long-prompt", type=int, default=400 if smoke else 3000, help="tokens, for the stall test")
    ap.add_argument("--e2e", type=int, default=3 if smoke else 30, help="keyword->answer samples (0 = skip)")
    ap.add_argument("--out", default=str(REPO / "runs" / "llm_service.json"))
    ap.add_argument("--no-edge", action="store_true", help="time answers at the reply stream, no edge node")
    ap.add_argument("--random-shape", default=None, choices=["default", "1b"],
                    help="benchmark a random-weight Llama of this shape instead of a model folder")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="wl-bench-llm-"))
    model, note = args.model, ""
    if model is None and args.random_shape is None and not smoke and (
            REPO / "models" / "llm" / "dense" / "config.json").is_file():
        model = str(REPO / "models" / "llm" / "dense")
    if model is None:
        shape = {} if smoke else {"hidden": 256, "layers": 6, "heads": 8, "kv_heads": 4, "vocab": 4096}
        if args.random_shape == "1b":  # Llama-3.2-1B's shape
            shape = {"hidden": 2048, "layers": 16, "heads": 32, "kv_heads": 8, "intermediate": 8192,
                     "model_vocab": 128256, "dtype": "bfloat16"}
        t0 = time.perf_counter()
        model = str(make_tiny_llama(work / "model", max_positions=8192, device=args.device, **shape))
        note = (f"random-weight Llama, {args.random_shape or 'default'} shape {shape} (EOS never sampled: "
                f"every request runs to max_tokens); made in {time.perf_counter() - t0:.0f}s")
    env = {"WAKELINE_LLM_DEVICE": args.device, "WAKELINE_LLM_MAX_PENDING_REQUESTS": "256",
           "WAKELINE_LLM_MAX_PENDING_TOKENS": "10000000", "WAKELINE_LLM_MAX_BATCH_SIZE": "32"}
    res: dict = {"model": model, "note": note, "device": args.device, "smoke": smoke, "load": [], "stall": {}}
    port = free_port()
    srv = start_llm(model, port, env, timeout=600)
    target = f"127.0.0.1:{port}"
    redis = None  # stop() of the embedded Redis
    try:
        for c in [int(x) for x in args.concurrency.split(",")]:
            r = asyncio.run(load_level(target, c, max(args.requests, c), args.max_tokens))
            print(r, flush=True)
            res["load"].append(r)
        res["stall"]["chunked (256 tokens/step)"] = asyncio.run(stall(target, args.long_prompt))
        if args.e2e:
            from services.bus import embedded_redis

            url, redis = embedded_redis(work / "redis")
            res["e2e"] = asyncio.run(keyword_to_answer(target, url, args.e2e, work, not args.no_edge))
            if not args.no_edge:
                res["spoken"] = asyncio.run(spoken_keyword_to_answer(target, url, args.e2e, work))
    finally:
        srv.cleanup()
        if redis:
            redis()
    # the same long prompt without chunking: one prefill of the whole prompt inside one step
    port = free_port()
    srv: ServiceProcess = start_llm(model, port, {**env, "WAKELINE_LLM_MAX_PREFILL_TOKENS_PER_STEP": "100000"},
                                    timeout=600)
    try:
        res["stall"]["unchunked"] = asyncio.run(stall(f"127.0.0.1:{port}", args.long_prompt))
    finally:
        srv.cleanup()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(table(res))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
