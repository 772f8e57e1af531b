"""`wakeline device stream`: act as a device: stream a WAV file or a microphone to an edge node."""

from __future__ import annotations

from services.cli.common import add_command, add_group


def register(sub) -> None:
    """Add the `device` group."""
    g = add_group(sub, "device", "a device client of an edge node")
    p = add_command(g, "stream", "stream audio to an edge node; print detections and answers as they arrive", _stream)
    p.add_argument("file", nargs="?", help="audio file (WAV/FLAC/...; any rate and channel count)")
    p.add_argument("--mic", action="store_true", help="stream the default microphone (needs sounddevice)")
    p.add_argument("--keyword", "-k", action="append", required=True,
                   help="keyword to enroll, repeatable; TEXT or TEXT:THRESHOLD")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--realtime", dest="realtime", action="store_true", default=True, help="send at real-time pace")
    pace.add_argument("--fast", dest="realtime", action="store_false", help="send as fast as the node accepts")
    p.add_argument("--target", default="127.0.0.1:50051", help="edge node HOST:PORT")
    p.add_argument("--token", default=None, help="bearer token (env WAKELINE_DEVICE_TOKEN)")
    p.add_argument("--tls-ca", default=None, help="PEM root certificate: use TLS")
    p.add_argument("--device-id", default=None, help="device id (default: device-<hostname>)")
    p.add_argument("--chunk-ms", type=int, default=100, help="audio per message")
    p.add_argument("--float32", action="store_true", help="send FLOAT32 samples instead of PCM16")
    p.add_argument("--wait", type=float, default=0.0, help="after the audio, wait this long for answers")
    p.add_argument("--json", action="store_true", help="print one JSON object per event")
    p.add_argument("--attribute", action="append", default=[], help="KEY=VALUE copied into every KeywordEvent")


def _stream(args) -> int:
    import asyncio
    import os
    import socket
    import sys

    import grpc

    if bool(args.file) == bool(args.mic):
        print("give exactly one of FILE or --mic", file=sys.stderr)
        return 2
    token = args.token or os.environ.get("WAKELINE_DEVICE_TOKEN")
    device_id = args.device_id or f"device-{socket.gethostname()}"
    attrs = dict(a.split("=", 1) for a in args.attribute if "=" in a)
    try:
        return asyncio.run(_run(args, token, device_id, attrs))
    except grpc.aio.AioRpcError as e:
        print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


async def _run(args, token, device_id, attrs) -> int:
    import json
    from pathlib import Path

    from google.protobuf.json_format import MessageToDict
    from wakeline.v1 import audio_pb2

    from services.edge.client import DeviceAudio, microphone, open_channel, stream_device

    enc = audio_pb2.AUDIO_ENCODING_FLOAT32 if args.float32 else audio_pb2.AUDIO_ENCODING_PCM16
    audio = DeviceAudio.from_file(args.file, enc) if args.file else None
    mic = microphone(16000, args.chunk_ms) if args.mic else None
    root = Path(args.tls_ca).read_bytes() if args.tls_ca else None
    n_det = 0
    async with open_channel(args.target, root) as channel:
        async for r in stream_device(channel, device_id, args.keyword, audio, chunk_ms=args.chunk_ms,
                                     realtime=args.realtime, linger_s=args.wait, token=token,
                                     attributes=attrs, mic_chunks=mic):
            kind = r.kind
            msg = getattr(r.response, kind)
            if args.json:
                out = {"type": kind, **MessageToDict(msg, preserving_proto_field_name=True)}
                if r.latency_s is not None:
                    out["client_latency_ms"] = round(r.latency_s * 1000, 1)
                print(json.dumps(out), flush=True)
                n_det += kind == "detection"
                continue
            if kind == "started":
                kws = ", ".join(f"{k.text} ({k.threshold:.3g}{', auto' if k.auto_threshold else ''})" for k in msg.keywords)
                print(f"stream {msg.session_id} on {msg.edge_node}: keywords {kws}", flush=True)
            elif kind == "detection":
                n_det += 1
                lat = f", {r.latency_s * 1000:.0f} ms after sending" if r.latency_s is not None else ""
                print(f"[{msg.end_time:7.2f}s] DETECTED {msg.keyword!r} score {msg.score:.3f}{lat}"
                      f" (event {msg.event_id})", flush=True)
            elif kind == "answer":
                text = msg.text or f"error: {msg.error}"
                print(f"ANSWER for {msg.keyword!r} (event {msg.event_id}): {text}", flush=True)
            elif kind == "keywords":
                print("keywords now: " + ", ".join(k.text for k in msg.keywords), flush=True)
    if not args.json:
        print(f"done: {n_det} detection(s)")
    return 0
