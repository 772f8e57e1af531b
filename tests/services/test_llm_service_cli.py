"""`wakeline llm serve | generate | info` as real processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO, free_port


def _cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_serve_generate_info_and_drain_on_sigterm(tmp_path):
    pytest.importorskip("llm.engine", reason="the LLM engine (llm/engine.py) is not in this checkout yet")
    from services.llm.testing import make_tiny_llama, start_llm

    model = make_tiny_llama(tmp_path / "model")
    port = free_port()
    srv = start_llm(model, port)
    try:
        target = f"127.0.0.1:{port}"
        out = _cli("llm", "generate", "turn the lights on", "--target", target, "--max-tokens", "7", "--stats")
        assert out.returncode == 0, out.stderr
        stats = json.loads(out.stderr.strip().splitlines()[-1])
        assert stats["completion_tokens"] == 7 and stats["finish_reason"] == "length" and stats["ttft_ms"] > 0
        chat = _cli("llm", "generate", "hi", "--chat", "--system", "be brief", "--target", target, "--max-tokens", "3",
                    "--no-stream", "--stats")
        assert chat.returncode == 0 and json.loads(chat.stderr.strip().splitlines()[-1])["completion_tokens"] == 3
        info = _cli("llm", "info", "--target", target)
        assert 'architecture: "LlamaForCausalLM"' in info.stdout and "context_length: 512" in info.stdout
        bad = _cli("llm", "generate", "x " * 2000, "--target", target)
        assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr and "512" in bad.stderr
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(30) == 0
    finally:
        srv.cleanup()


def test_serve_refuses_a_missing_model(tmp_path):
    out = _cli("llm", "serve", "--model", str(tmp_path / "missing"), "--port", "0")
    assert out.returncode == 2 and "no model at" in out.stderr


def test_tensor_parallel_serving_matches_one_rank(tmp_path):
    """`--tp 2`: torchrun starts two gloo ranks, rank 0 serves; greedy output equals the single-device engine."""
    pytest.importorskip("llm.parallel.mirror", reason="llm/parallel's serving seam is not in this checkout yet")
    from llm.engine import Engine, SamplingParams
    from services.llm.testing import grpc_serving, make_tiny_llama

    model = make_tiny_llama(tmp_path / "model")
    ref = Engine.from_pretrained(str(model), max_batch_size=2)
    want = ref.generate_ids([ref.tokenizer.encode("turn the lights on")], SamplingParams(max_tokens=8))[0]
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "llm", "serve", "--model", str(model), "--port",
                             str(port), "--tp", "2", "--dtype", "float32"], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        import time

        end = time.monotonic() + 120
        while time.monotonic() < end and not grpc_serving(f"127.0.0.1:{port}", "wakeline.v1.LlmService"):
            assert proc.poll() is None, "torchrun exited"
            time.sleep(0.3)
        out = _cli("llm", "generate", "turn the lights on", "--target", f"127.0.0.1:{port}", "--max-tokens", "8",
                   "--stats", "--no-stream")
        assert out.returncode == 0, out.stderr
        assert out.stdout.rstrip("\n") == ref.tokenizer.decode(want)
        info = _cli("llm", "info", "--target", f"127.0.0.1:{port}")
        assert "tp_size: 2" in info.stdout
    finally:
        import os

        os.killpg(proc.pid, signal.SIGTERM)  # torchrun and both ranks: rank 0 drains, then releases rank 1
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    left = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert left == [], f"ranks left behind: {left}"
