"""A tiny random-weight Llama checkpoint (HF folder) for service and worker tests and smoke runs.

Made with transformers' own `LlamaForCausalLM.save_pretrained` and a byte-level BPE trained with
`tokenizers`, so it is a standard folder that `llm.Engine.from_pretrained` loads like any other.
The EOS row of the LM head is zeroed: with random weights some other logit is almost surely
positive, so greedy generations run to max_tokens and tests get deterministic lengths.
"""

from __future__ import annotations

import json
from pathlib import Path

_TEXT = ("turn the lights on in the kitchen please. stop the music. what time is it? "
         "the quick brown fox jumps over the lazy dog. hello world, wakeline answers in one sentence. ")
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


def make_tiny_llama(out: str | Path, *, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                    max_positions: int = 512, vocab: int = 512, seed: int = 0, intermediate: int | None = None,
                    model_vocab: int | None = None, dtype: str | None = None, device: str = "cpu") -> Path:
    """Write a random-weight Llama-shaped checkpoint with tokenizer and chat template to `out`; returns it.

    `vocab` bounds the BPE tokenizer (trained on a few sentences, so it stays small); `model_vocab`
    sets the embedding size when a realistic shape is wanted (ids past the tokenizer decode to "").
    `dtype` ("bfloat16", ...) is the stored dtype.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([_TEXT] * 20, trainer)
    tok.save(str(out / "tokenizer.json"))
    n_vocab = tok.get_vocab_size()
    eos = tok.token_to_id("</s>")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "add_bos_token": False,
        "chat_template": CHAT_TEMPLATE}))
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=max(n_vocab, model_vocab or 0), hidden_size=hidden,
                      intermediate_size=intermediate or hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=max_positions, bos_token_id=tok.token_to_id("<s>"),
                      eos_token_id=eos, pad_token_id=0, tie_word_embeddings=False, rope_theta=10000.0)
    with torch.device(device):  # random init of a 1B-shaped model is much faster on a GPU
        model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight[eos].zero_()
    if dtype:
        model = model.to(getattr(torch, dtype))
    model.save_pretrained(out, safe_serialization=True)
    return out


class ServiceProcess:
    """`python -m services.cli ARGS...` in a subprocess with its log in a file (tests and benchmarks).

    `start(ready)` waits until `ready()` is true (e.g. gRPC health SERVING) or the log shows `ready_line`.
    """

    def __init__(self, name: str, args: list[str], env: dict[str, str] | None = None,
                 workdir: str | Path | None = None) -> None:
        import tempfile

        self.name, self.args = name, list(args)
        self.env = dict(env or {})
        self.dir = Path(workdir or tempfile.mkdtemp(prefix=f"wl-{name}-"))
        self.log_path = self.dir / f"{name}.log"
        self.proc = None

    def start(self, ready=None, ready_line: str | None = None, timeout: float = 120.0) -> ServiceProcess:
        import os
        import subprocess
        import sys
        import time

        repo = Path(__file__).resolve().parents[2]
        path = os.pathsep.join(p for p in (str(repo), str(repo / "protos"), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": path, **self.env}
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen([sys.executable, "-u", "-m", "services.cli", *self.args], cwd=repo, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if (ready is not None and ready()) or (ready_line and ready_line in self.log_tail(100_000)):
                return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL (kill -9) and reap."""
        if self.alive():
            self.proc.kill()
            self.proc.wait()

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait (SIGKILL after `timeout`); returns the exit code."""
        import subprocess

        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.returncode

    def cleanup(self) -> None:
        import shutil

        self.kill()
        if getattr(self, "_log", None):
            self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def grpc_serving(target: str, service: str = "") -> bool:
    """True when `target`'s standard health service reports `service` SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as ch:
        try:
            r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
        except grpc.RpcError:
            return False
    return r.status == health_pb2.HealthCheckResponse.SERVING


def start_llm(model: str | Path, port: int, env: dict | None = None, timeout: float = 180.0) -> ServiceProcess:
    """`wakeline llm serve` on 127.0.0.1:`port`, returned once SERVING."""
    e = {"WAKELINE_LLM_MODEL": str(model), "WAKELINE_LLM_PORT": str(port), "WAKELINE_LLM_HOST": "127.0.0.1",
         "WAKELINE_LLM_GRACE_S": "1", **(env or {})}
    p = ServiceProcess("llm", ["llm", "serve"], e)
    return p.start(ready=lambda: grpc_serving(f"127.0.0.1:{port}", "wakeline.v1.LlmService"), timeout=timeout)


def start_worker(bus_url: str, llm_target: str, name: str, env: dict | None = None,
                 timeout: float = 120.0) -> ServiceProcess:
    """`wakeline worker run` (gRPC backend) as consumer `name`, returned once consuming."""
    e = {"WAKELINE_WORKER_BUS_URL": bus_url, "WAKELINE_WORKER_LLM_TARGET": llm_target,
         "WAKELINE_WORKER_BACKEND": "grpc", "WAKELINE_WORKER_CONSUMER": name, **(env or {})}
    return ServiceProcess(name, ["worker", "run"], e).start(ready_line="worker running", timeout=timeout)
