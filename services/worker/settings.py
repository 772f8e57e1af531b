"""Settings of the keyword-event worker (env prefix WAKELINE_WORKER_), built once in `main()`."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.shipped import LLM_MODEL


class WorkerSettings(BaseSettings):
    """Everything `wakeline worker run` can be told; each field is also `WAKELINE_WORKER_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="WAKELINE_WORKER_", extra="ignore")

    # The bus. Several workers with the same group share the load; each needs its own name.
    bus_url: str | None = None  # None: an embedded Redis in bus_data_dir (only useful for one host)
    bus_namespace: str = "wakeline"
    bus_data_dir: Path = Path("var/worker/redis")
    group: str = "llm-workers"
    consumer: str = Field(default_factory=lambda: f"worker-{socket.gethostname()}-{os.getpid()}")
    concurrency: int = Field(8, ge=1, description="events handled at once (they batch in the engine)")
    visibility_timeout_s: float = Field(30.0, gt=0, description="idle time before another worker claims")
    max_deliveries: int = Field(5, ge=1)

    # Where answers come from: an engine in this process, or the LLM gRPC service.
    backend: Literal["local", "grpc"] = "grpc"
    llm_target: str = "127.0.0.1:50061"
    llm_token: str | None = None
    llm_tls_ca: Path | None = None
    model: Path = LLM_MODEL
    device: str = "cpu"
    dtype: str | None = None

    templates: Path | None = Field(None, description="YAML or JSON prompt templates per keyword")
    max_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.0, ge=0)
    request_timeout_s: float = Field(60.0, gt=0)
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus /metrics port; 0 = off")
    health_port: int = Field(0, ge=0, le=65535, description="gRPC health port (SERVING while consuming); 0 = off")
    health_host: str = "127.0.0.1"

    @field_validator("bus_url", "llm_token", mode="before")
    @classmethod
    def _empty_is_none(cls, v):
        return None if v in ("", None) else v
