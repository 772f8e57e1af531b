"""Open device sessions and the routing of answers to them.

Answers come from this node's reply stream and are addressed by `device_id`. They go to the
device's open session only; when the device is between connections they wait in a per-device
mailbox, bounded in count and age, and are handed over when it reconnects. A device id never
sees another device's answers because the only lookup is by the answer's own device id.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from dataclasses import dataclass, field

from wakeline.v1 import bus_pb2, edge_pb2

log = logging.getLogger(__name__)

# An item of a session's outbound queue: a response, or a terminal (code, message) from the server.
CLOSE = object()


@dataclass
class Session:
    """One open `Stream` RPC of one device."""

    device_id: str
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # serializes work on the spotter stream
    stream: object = None  # the spotter's per-device Stream
    keywords: dict = field(default_factory=dict)  # text -> edge_pb2.EnrolledKeyword
    attributes: dict = field(default_factory=dict)  # copied into every KeywordEvent
    superseded: bool = False

    def send(self, resp: edge_pb2.StreamResponse) -> None:
        self.out.put_nowait(resp)

    def close(self, code=None, message: str = "") -> None:
        """End the RPC: with a status if `code` is given, else normally."""
        self.out.put_nowait((CLOSE, code, message))


class SessionRegistry:
    """Device id -> open session, plus the mailboxes of disconnected devices.

    Args:
        answer_ttl_s: how long an undelivered answer is kept.
        max_pending: answers kept per disconnected device (oldest dropped first).
        on_answer: optional callback(outcome) for metrics: "delivered", "queued", "expired", "dropped".
    """

    def __init__(self, answer_ttl_s: float = 60.0, max_pending: int = 32, on_answer=None) -> None:
        self.answer_ttl_s = answer_ttl_s
        self.max_pending = max_pending
        self._sessions: dict[str, Session] = {}
        self._pending: dict[str, collections.deque] = {}
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._on_answer = on_answer or (lambda outcome: None)

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, device_id: str) -> Session | None:
        return self._sessions.get(device_id)

    def open(self, device_id: str) -> Session:
        """Register a new session; a still-open older one of the same device is told to end."""
        old = self._sessions.get(device_id)
        if old is not None:
            old.superseded = True
            old.close("ABORTED", f"device {device_id!r} opened a newer stream")
            log.info("session superseded", extra={"device_id": device_id, "session_id": old.session_id})
        s = Session(device_id)
        self._sessions[device_id] = s
        for answer in self._take_pending(device_id):
            s.send(edge_pb2.StreamResponse(answer=answer))
            self._on_answer("delivered")
        return s

    def close(self, session: Session) -> None:
        """Forget `session` (only if it is still the device's current one)."""
        if self._sessions.get(session.device_id) is session:
            del self._sessions[session.device_id]

    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    def route_answer(self, answer: bus_pb2.Answer) -> str:
        """Deliver or park one answer; returns the outcome. Redelivered answer ids are ignored."""
        if answer.answer_id:
            if answer.answer_id in self._seen:
                return "duplicate"
            self._seen[answer.answer_id] = None
            if len(self._seen) > 10_000:
                self._seen.popitem(last=False)
        s = self._sessions.get(answer.device_id)
        if s is not None:
            s.send(edge_pb2.StreamResponse(answer=answer))
            outcome = "delivered"
        else:
            box = self._pending.setdefault(answer.device_id, collections.deque())
            box.append((time.monotonic(), answer))
            outcome = "queued"
            while len(box) > self.max_pending:
                box.popleft()
                self._on_answer("dropped")
        self._on_answer(outcome)
        return outcome

    def expire(self) -> int:
        """Drop parked answers older than the TTL; returns how many were dropped."""
        cutoff = time.monotonic() - self.answer_ttl_s
        dropped = 0
        for device_id in list(self._pending):
            box = self._pending[device_id]
            while box and box[0][0] < cutoff:
                box.popleft()
                dropped += 1
                self._on_answer("expired")
            if not box:
                del self._pending[device_id]
        return dropped

    def pending_count(self, device_id: str | None = None) -> int:
        if device_id is not None:
            return len(self._pending.get(device_id, ()))
        return sum(len(b) for b in self._pending.values())

    def _take_pending(self, device_id: str) -> list[bus_pb2.Answer]:
        self.expire()
        box = self._pending.pop(device_id, None)
        return [a for _, a in box] if box else []
