"""A bounded, durable, in-order on-disk queue of stream entries (sqlite, synchronous=FULL).

Producers write here while Redis is unreachable and replay from here when it returns. One
spool file belongs to one producer process: sqlite serializes writers, but replay order is
only meaningful per producer.

Calls are synchronous on purpose: the asyncio producer checks "spool empty" and switches back
to direct publishing with no await in between, which keeps per-producer order without locks.
An append is one fsync'd sqlite transaction (~1 ms on SSD); the spool is only written during
outages, at edge event rates.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from prometheus_client import Counter, Gauge

log = logging.getLogger("wakeline.bus.spool")

SPOOL_DROPPED = Counter("wakeline_bus_spool_dropped_total", "Spooled entries dropped because the spool was full")
SPOOL_DEPTH = Gauge("wakeline_bus_spool_depth", "Entries waiting in the producer spool", ["spool"])

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (seq INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL,
                                    eid BLOB, typ BLOB, data BLOB NOT NULL, ts BLOB);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
"""


class Spool:
    """Append-only FIFO of (stream, fields) with a bound on the number of entries.

    When full, the oldest entries are dropped, counted in `dropped` (persisted across restarts),
    in the `wakeline_bus_spool_dropped_total` counter, and logged as a warning.
    """

    def __init__(self, path: str | os.PathLike, max_events: int) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be >= 1, got {max_events}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_events = max_events
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # fsync every commit: an acked append survives power loss
        self._db.executescript(_SCHEMA)
        self._count = self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        row = self._db.execute("SELECT v FROM meta WHERE k='dropped'").fetchone()
        self.dropped = row[0] if row else 0
        self._gauge = SPOOL_DEPTH.labels(spool=self.path.name)
        self._gauge.set(self._count)

    def __len__(self) -> int:
        return self._count

    def append(self, items: list[tuple[str, dict[bytes, bytes]]]) -> int:
        """Durably append entries in order; returns how many old entries were dropped to make room."""
        if not items:
            return 0
        drop = max(0, self._count + len(items) - self.max_events)
        rows = [(s, f.get(b"id"), f.get(b"type"), f[b"data"], f.get(b"ts")) for s, f in items]
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT INTO entries (stream, eid, typ, data, ts) VALUES (?,?,?,?,?)", rows)
            if drop:
                self._db.execute("DELETE FROM entries WHERE seq IN (SELECT seq FROM entries ORDER BY seq LIMIT ?)",
                                 (drop,))
                self._db.execute("INSERT INTO meta (k, v) VALUES ('dropped', ?) "
                                 "ON CONFLICT(k) DO UPDATE SET v = v + excluded.v", (drop,))
        self._count += len(items) - drop
        self._gauge.set(self._count)
        if drop:
            self.dropped += drop
            SPOOL_DROPPED.inc(drop)
            log.warning("spool full: dropped oldest entries",
                        extra={"dropped": drop, "dropped_total": self.dropped, "spool": str(self.path)})
        return drop

    def peek(self, n: int) -> list[tuple[int, str, dict[bytes, bytes]]]:
        """The oldest `n` entries as (seq, stream, fields), without removing them."""
        cur = self._db.execute("SELECT seq, stream, eid, typ, data, ts FROM entries ORDER BY seq LIMIT ?", (n,))
        out = []
        for seq, stream, eid, typ, data, ts in cur:
            fields = {b"id": eid, b"type": typ, b"data": data, b"ts": ts}
            out.append((seq, stream, {k: v for k, v in fields.items() if v is not None}))
        return out

    def remove_through(self, seq: int) -> None:
        """Remove every entry up to and including `seq` (after a successful replay)."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM entries WHERE seq <= ?", (seq,))
        self._count = self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        self._gauge.set(self._count)

    def close(self) -> None:
        self._db.close()
