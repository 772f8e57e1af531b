"""Settings classes shared by several services (pydantic-settings, built once in `main()`).

Each service keeps its own class in its own package (`services/edge/settings.py`, ...); the bus
settings live here because every process that talks to the bus (edge, worker, `wakeline up`)
reads them.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.bus.core import BusConfig


class BusSettings(BaseSettings):
    """Bus connection and delivery settings; env prefix `WAKELINE_BUS_` (e.g. WAKELINE_BUS_URL)."""

    model_config = SettingsConfigDict(env_prefix="WAKELINE_BUS_", extra="ignore")

    url: str | None = Field(None, description="redis://[user:pass@]host:port/db, rediss://..., unix://...; "
                                              "unset = embedded Redis in data_dir")
    namespace: str = "wakeline"
    data_dir: str = ".wakeline/redis"
    spool_dir: str = ".wakeline/spool"
    spool_max_events: int = 100_000
    maxlen: int = 1_000_000
    visibility_timeout_s: float = 30.0
    max_deliveries: int = 5
    dedup_ttl_s: float = 24 * 3600.0
    socket_timeout_s: float = 5.0
    connect_timeout_s: float = 2.0

    def to_config(self) -> BusConfig:
        """The plain dataclass the bus library takes."""
        return BusConfig(**self.model_dump())
