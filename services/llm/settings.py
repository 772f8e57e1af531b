"""Settings of the LLM service (env prefix WAKELINE_LLM_), built once in `main()` and passed down."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.shipped import LLM_MODEL


class LlmSettings(BaseSettings):
    """Everything `wakeline llm serve` can be told, from flags or WAKELINE_LLM_* variables."""

    model_config = SettingsConfigDict(env_prefix="WAKELINE_LLM_", extra="ignore")

    model: Path = Field(LLM_MODEL, description="Hugging Face model folder")
    device: str = Field("cpu", description="cpu or cuda")
    dtype: str | None = Field(None, description="bfloat16, float16, float32; None = engine default")
    tp: int = Field(1, ge=1, description="tensor-parallel degree (ranks started by torchrun)")
    tp_calibration: Path | None = Field(None, description="quantized all-reduce calibration file")
    tp_timeout_s: float = Field(86400.0, gt=0, description="how long ranks wait for each other (idle included)")
    host: str = "127.0.0.1"
    port: int = Field(50061, ge=0, le=65535)
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus /metrics port; 0 = off")

    # Admission control: over either bound a request is refused at once (RESOURCE_EXHAUSTED).
    max_pending_requests: int = Field(64, ge=1, description="requests queued or running")
    max_pending_tokens: int = Field(65536, ge=1, description="prompt + max_tokens over pending requests")
    default_max_tokens: int = Field(128, ge=1)
    max_tokens_limit: int = Field(2048, ge=1, description="upper bound on a request's max_tokens")
    # Engine knobs, passed through when the engine supports them.
    max_batch_size: int | None = Field(None, ge=1)
    max_prefill_tokens_per_step: int | None = Field(256, ge=1, description="chunked-prefill budget")
    prefill_graphs: bool = Field(False, description="CUDA: replay captured prefills of first chunks "
                                 "(H100, 1B model: TTFT at 1k tokens 22.9 -> 7.1 ms); opt-in")
    decode_steps: int = Field(1, ge=1, le=256, description="greedy decode steps per host sync (CUDA graphs); "
                              "a request arriving mid-run waits up to this many steps to be admitted")
    compile: bool = Field(False, description="CUDA: torch.compile the decode graphs (~15 s per bucket at start)")
    cute_prefill: bool = Field(False, description="sm90+ GPUs with flash-attn-4 and quack-kernels installed: "
                               "FlashAttention-4 and a SwiGLU-epilogue GEMM for prompts (H100, 1B model, 8k-token "
                               "compiled prefill 39.4 -> 34.7 ms); without them a logged fallback to SDPA / cuBLAS")
    warmup: bool = True

    auth_tokens: str = Field("", description="comma-separated bearer tokens; empty = no auth")
    auth_tokens_file: Path | None = Field(None, description="file with one bearer token per line")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    grace_s: float = Field(5.0, ge=0, description="drain period on SIGTERM")
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda[:N], got {v!r}")
        return v

    def tokens(self) -> set[str]:
        """The accepted bearer tokens (from `auth_tokens` and `auth_tokens_file`); empty = open."""
        out = {t.strip() for t in self.auth_tokens.split(",") if t.strip()}
        if self.auth_tokens_file:
            out |= {ln.strip() for ln in Path(self.auth_tokens_file).read_text().splitlines() if ln.strip()}
        return out
