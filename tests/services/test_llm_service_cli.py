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


def test_serve_refuses_what_it_cannot_do(tmp_path):
    out = _cli("llm", "serve", "--model", str(tmp_path / "missing"), "--port", "0")
    assert out.returncode == 2 and "no model at" in out.stderr
    out = _cli("llm", "serve", "--model", str(tmp_path), "--port", "0", "--tp", "2")
    assert out.returncode == 2 and "--tp 2" in out.stderr and "not supported" in out.stderr
