"""Edge node load: N concurrent device streams at real-time pace against one edge node.

    python bench/edge_load.py --streams 10,25,50,75 --seconds 20 --out runs/edge/load.json

Starts `wakeline edge serve` in a subprocess (embedded Redis), then for each N runs N device
streams of looped eSpeak speech ("... lights on ...", "... stop music ...") paced at real time.
A stream is *sustained in real time* when its sends never fell more than 0.5 s behind schedule
and the node finished its last chunk within 1 s of it being sent. Reports node CPU per stream
(its own process plus the embedded Redis), server-side chunk latency and client-side detection
latency (arrival minus the moment the audio at the keyword's end was sent). The clients share
the machine with the node; their CPU is reported too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "protos")]

import numpy as np  # noqa: E402

from services.edge.client import DeviceAudio, StreamStats, open_channel, stream_device  # noqa: E402
from services.edge.testing import EdgeProcess, utterance_track  # noqa: E402

SCRIPT = [0.6, "please turn the lights on", 1.2, "lights on", 0.9, "can you stop music now", 1.0, "stop music", 1.1]


def scrape(port: int, processes: int = 1) -> dict[str, float]:
    """Edge metrics summed over the node's processes (metrics ports port..port+processes-1)."""
    out: dict[str, float] = {}
    for i in range(processes):
        body = urllib.request.urlopen(f"http://127.0.0.1:{port + i}/metrics", timeout=5).read().decode()
        for line in body.splitlines():
            if line.startswith("wakeline_edge_"):
                k, v = line.rsplit(" ", 1)
                k = re.sub(r'node="[^"]*",?', "", k).replace(",}", "}").replace("{}", "")
                out[k] = out.get(k, 0.0) + float(v)
    return out


def hist_quantile(before: dict, after: dict, name: str, q: float) -> float | None:
    """Quantile (upper bucket edge) of a Prometheus histogram over the interval between two scrapes."""
    edges = []
    for k, v in after.items():
        if k.startswith(name + "_bucket{"):
            le = k.split('le="')[1].split('"')[0]
            edges.append((float("inf") if le == "+Inf" else float(le), v - before.get(k, 0.0)))
    edges.sort()
    total = edges[-1][1] if edges else 0
    if total <= 0:
        return None
    for le, c in edges:
        if c >= q * total:
            return le
    return None


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of `pid` and all its live descendants (node processes, Redis)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total


async def one_stream(target: str, dev: str, audio: DeviceAudio, keywords, delay: float, channel) -> dict:
    await asyncio.sleep(delay)
    stats = StreamStats()
    lat, dets, t_end = [], 0, None
    try:
        async for r in stream_device(channel, dev, keywords, audio, realtime=True, stats=stats):
            if r.kind == "detection":
                dets += 1
                if r.latency_s is not None:
                    lat.append(r.latency_s)
        t_end = time.perf_counter()
        error = None
    except Exception as e:  # a refused or broken stream counts as not sustained
        error = repr(e)[:200]
    walls = np.array([w for _, w in stats.send_log]) if stats.send_log else np.zeros(1)
    ends = np.array([e for e, _ in stats.send_log]) if stats.send_log else np.zeros(1)
    send_lag = float(np.max((walls - walls[0]) - (ends - ends[0])))
    drain = None if t_end is None or not stats.send_log else float(t_end - walls[-1])
    ok = bool(error is None and send_lag < 0.5 and drain is not None and drain < 1.0)
    return {"ok": ok, "send_lag_s": send_lag, "drain_s": drain, "detections": dets, "latencies": lat, "error": error}


class RunningNode:
    """A node started elsewhere (--target): node id must be edge-bench for the metric names."""

    def __init__(self, target: str, metrics_port: int, pid: int, processes: int = 1) -> None:
        self.target, self.metrics_port, self.pid, self.processes = target, metrics_port, pid, processes


async def level(node, n: int, audio: DeviceAudio, keywords, seconds: float) -> dict:
    rng = np.random.default_rng(n)
    channels = [open_channel(node.target) for _ in range(n)]  # one connection per device, as in the field
    before, cpu0, t0 = scrape(node.metrics_port, node.processes), proc_cpu(node.pid), time.perf_counter()
    me0 = time.process_time()
    tasks = []
    for i in range(n):
        off = int(rng.integers(0, audio.samples.size - int(seconds * audio.sample_rate)))
        clip = DeviceAudio(audio.samples[off: off + int(seconds * audio.sample_rate)], audio.sample_rate)
        tasks.append(one_stream(node.target, f"load-{n}-{i}", clip, keywords, float(rng.uniform(0, 0.1)),
                                channels[i % len(channels)]))
    res = await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    cpu, me = proc_cpu(node.pid) - cpu0, time.process_time() - me0
    after = scrape(node.metrics_port, node.processes)
    for ch in channels:
        await ch.close()
    lat = np.array([x for r in res for x in r["latencies"]])
    audio_s = after["wakeline_edge_audio_seconds_total"] - before.get("wakeline_edge_audio_seconds_total", 0.0)
    return {
        "streams": n, "sustained": sum(r["ok"] for r in res), "wall_s": wall, "audio_s": audio_s,
        "node_cpu_s": cpu, "node_cores": cpu / wall, "cpu_ms_per_audio_s": 1000 * cpu / max(audio_s, 1e-9),
        "node_core_pct_per_stream": 100 * cpu / wall / n, "client_cores": me / wall,
        "chunk_p50_ms": _ms(hist_quantile(before, after, "wakeline_edge_chunk_latency_seconds", 0.5)),
        "chunk_p99_ms": _ms(hist_quantile(before, after, "wakeline_edge_chunk_latency_seconds", 0.99)),
        "detections": int(sum(r["detections"] for r in res)),
        "det_p50_ms": float(np.percentile(lat, 50) * 1000) if lat.size else None,
        "det_p99_ms": float(np.percentile(lat, 99) * 1000) if lat.size else None,
        "max_send_lag_s": max(r["send_lag_s"] for r in res),
        "max_drain_s": max((r["drain_s"] or 99.0) for r in res),
        "errors": sorted({r["error"] for r in res if r["error"]})[:3],
        "loadavg_1m_before": None,
    }


def _ms(x):
    return None if x is None else x * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", default="10,25,50,75", help="comma-separated concurrency levels")
    ap.add_argument("--seconds", type=float, default=20.0, help="audio per stream per level")
    ap.add_argument("--model-dir", default=None, help="default: models/kws/default, else an untrained full-size export")
    ap.add_argument("--threads", type=int, default=2, help="node worker threads (WAKELINE_EDGE_NUM_THREADS)")
    ap.add_argument("--processes", type=int, default=1, help="node processes on the port (WAKELINE_EDGE_PROCESSES)")
    ap.add_argument("--out", default="runs/edge/load.json")
    ap.add_argument("--target", default=None, help="use a running node (node id edge-bench) instead of starting one")
    ap.add_argument("--metrics-port", type=int, default=9464, help="with --target: its metrics port")
    ap.add_argument("--pid", type=int, default=None, help="with --target: its pid, for CPU accounting")
    a = ap.parse_args()

    model_dir, model = a.model_dir, "given"
    if a.target:
        model = a.model_dir or "untrained"  # say which model the running node has with --model-dir
    elif model_dir is None and (REPO / "models/kws/default/encoder.onnx").exists():
        model_dir, model = str(REPO / "models/kws/default"), "models/kws/default"
    if model_dir is None and not a.target:
        from kws.export import export_untrained

        model_dir, model = str(export_untrained(tempfile.mkdtemp(prefix="edge-bench-"), small=False)), "untrained"
    # An untrained model fires at random; a tiny threshold on one keyword makes it fire about once a
    # second per stream so that the latency of the detection path is measured all the same.
    keywords = ["lights on", "stop music"] if model != "untrained" else [("lights on", 0.001), "stop music"]

    samples, _ = utterance_track(SCRIPT * 4)
    audio = DeviceAudio(np.tile(samples, int(np.ceil((a.seconds + 5) * 16000 / samples.size)) + 1), 16000)
    if a.target:
        node = RunningNode(a.target, a.metrics_port, a.pid, a.processes)
    else:
        node = EdgeProcess(model_dir, None, node_id="edge-bench", env={
            "WAKELINE_EDGE_MAX_STREAMS": "2000", "WAKELINE_EDGE_NUM_THREADS": str(a.threads),
            "WAKELINE_EDGE_PROCESSES": str(a.processes)})
        node.start()
        node.pid = node.proc.pid
    rows = []
    try:
        for n in [int(x) for x in a.streams.split(",")]:
            load = os.getloadavg()[0]
            r = asyncio.run(level(node, n, audio, keywords, a.seconds))
            r["loadavg_1m_before"] = load
            rows.append(r)
            _print_row(r)
    finally:
        if not a.target:
            node.terminate()
            node.cleanup()
    out = {"bench": "edge_load", "model": model, "seconds_per_stream": a.seconds, "threads": a.threads,
           "processes": a.processes,
           "cpus": os.cpu_count(), "keywords": [str(k) for k in keywords], "levels": rows,
           "max_sustained": max((r["streams"] for r in rows if r["sustained"] == r["streams"]), default=0)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(f"\nmodel: {model}; all streams sustained up to N = {out['max_sustained']}; JSON: {a.out}")
    return 0


_HEAD = False


def _print_row(r: dict) -> None:
    global _HEAD
    f = "{:>7} {:>9} {:>10} {:>13} {:>14} {:>12} {:>12} {:>10} {:>10} {:>8}"
    if not _HEAD:
        print(f.format("streams", "sustained", "node cores", "%core/stream", "ms cpu/audio s", "chunk p99 ms",
                       "det p50 ms", "det p99 ms", "detections", "load1m"))
        _HEAD = True

    def fmt(x, d=1):
        return "n/a" if x is None else f"{x:.{d}f}"

    print(f.format(r["streams"], r["sustained"], fmt(r["node_cores"], 2), fmt(r["node_core_pct_per_stream"], 2),
                   fmt(r["cpu_ms_per_audio_s"]), fmt(r["chunk_p99_ms"]), fmt(r["det_p50_ms"]), fmt(r["det_p99_ms"]),
                   r["detections"], fmt(r["loadavg_1m_before"], 2)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
