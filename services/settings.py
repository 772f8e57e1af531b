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
    # the defaults are the bus library's own (one place to change them)
    namespace: str = BusConfig.namespace
    data_dir: str = BusConfig.data_dir
    spool_dir: str = BusConfig.spool_dir
    spool_max_events: int = BusConfig.spool_max_events
    maxlen: int = BusConfig.maxlen
    visibility_timeout_s: float = BusConfig.visibility_timeout_s
    max_deliveries: int = BusConfig.max_deliveries
    dedup_ttl_s: float = BusConfig.dedup_ttl_s
    socket_timeout_s: float = BusConfig.socket_timeout_s
    connect_timeout_s: float = BusConfig.connect_timeout_s

    def to_config(self) -> BusConfig:
        """The plain dataclass the bus library takes."""
        return BusConfig(**self.model_dump())
