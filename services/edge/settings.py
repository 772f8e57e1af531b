"""Settings of the edge node (env prefix `WAKELINE_EDGE_`), built once in `main()` and passed down."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.shipped import KWS_MODEL


class EdgeSettings(BaseSettings):
    """Everything `wakeline edge serve` can be told; each field is also `WAKELINE_EDGE_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="WAKELINE_EDGE_", extra="ignore")

    host: str = "0.0.0.0"
    port: int = Field(50051, ge=0, le=65535)
    model_dir: Path = KWS_MODEL
    node_id: str = Field(default_factory=lambda: f"edge-{socket.gethostname()}")
    # The bus: unset fields fall back to WAKELINE_BUS_* (services.settings.BusSettings); no URL at
    # all means an embedded Redis (a real redis-server on a unix socket in the bus data dir).
    bus_url: str | None = None
    bus_namespace: str | None = None
    bus_data_dir: Path | None = None
    spool_dir: Path = Path(".wakeline/edge/spool")

    max_streams: int = Field(256, ge=1)
    max_chunk_bytes: int = Field(64 * 1024, ge=64)
    max_keywords: int = Field(32, ge=1)
    max_message_bytes: int = Field(1024 * 1024, ge=1024)
    # Worker processes sharing the port (SO_REUSEPORT), each its own node `<node_id>-<i>` with its own
    # metrics port (metrics_port + i): the spotter's Python work holds the GIL, so this is how a node
    # uses more than one core. Devices keep one connection per stream, so a stream and its enrollment
    # RPCs land on the same process.
    processes: int = Field(1, ge=1)
    reuse_port: bool = False
    # New streams are refused (RESOURCE_EXHAUSTED) while the smoothed chunk lag exceeds this; 0 = never.
    overload_lag_s: float = Field(2.0, ge=0)
    num_threads: int = Field(2, ge=1)  # worker threads running the Spotter off the event loop
    ort_threads: int = Field(1, ge=1)  # onnxruntime intra-op threads per session
    # Threshold of a keyword enrolled without one: "auto" (calibrated per keyword against generated
    # confusable texts, the contract of edge.proto) or "default" (the model card's).
    threshold_mode: Literal["auto", "default"] = "auto"

    # Answers for a device that is not connected are kept this long, at most this many per device.
    answer_ttl_s: float = Field(60.0, gt=0)
    answer_max_pending: int = Field(32, ge=1)

    # Bearer tokens: a file of one token per line and/or a comma-separated list; none = auth off.
    auth_tokens_file: Path | None = None
    auth_tokens: str | None = None

    tls_cert: Path | None = None
    tls_key: Path | None = None

    metrics_port: int | None = Field(9464, ge=0, le=65535)  # None: no metrics endpoint
    grace_s: float = Field(10.0, ge=0)  # drain period on SIGTERM

    @field_validator("bus_url", "bus_namespace", "auth_tokens", mode="before")
    @classmethod
    def _empty_is_none(cls, v):
        return None if v in ("", None) else v

    @model_validator(mode="after")
    def _tls_pair(self) -> EdgeSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both tls_cert and tls_key (WAKELINE_EDGE_TLS_CERT/_KEY)")
        return self
